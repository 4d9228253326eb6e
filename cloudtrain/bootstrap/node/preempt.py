"""The cloud's preemption notice and the checkpoints' copy to the bucket, run ON a cloud node by
its watchdog (stdlib only; shipped beside watchdog.py with blobs.py and node_checkpoints.py).
Which notice a node reads is the provisioner's `node_preempt` (provisioner/cloud.py), handed to
the watchdog in its config.json as `preempt`; the bucket is the cluster's `checkpoints` output,
as `checkpoints`.

The notices, as documented:
- aws: `GET /latest/meta-data/spot/instance-action` with an IMDSv2 token (`PUT /latest/api/token`
  first); 404 while there is none, else {"action": "terminate"|"stop"|"hibernate", "time": ...},
  about two minutes ahead (EC2 User Guide, "Spot Instance interruption notices": check every 5 s).
- gcp: `GET /computeMetadata/v1/instance/preempted` with `Metadata-Flavor: Google`: "TRUE" once
  the VM is being preempted, with about 30 s left (Compute Engine docs, "Preemptible VM
  instances" / "Spot VMs", "Detect if a VM was preempted").
- azure: Scheduled Events, `GET /metadata/scheduledevents?api-version=2020-07-01` with
  `Metadata: true`: an event of EventType "Preempt" naming this VM in its Resources, at least
  30 s ahead (Azure docs, "Azure Metadata Service: Scheduled Events for Linux VMs"). Acknowledging
  it would only let Azure go sooner, so the watchdog does not.

On a notice the watchdog writes PREEMPTED into the folder of every running job, before anything
else (the caller then sees a preemption, not a crash), then pushes each job's complete
checkpoints to the bucket, the newest first, and writes the marker again with what went.

`jobs/<id>/preempted.json` (read by the caller's recovery, provisioner/cloud.py and recovery.py):
    {"by": "preemption",         what ended the job (as ENDED_BY's "by" names the watchdog)
     "cloud": "aws"|"gcp"|"azure",
     "at": 1764612345.6,         unix time the watchdog saw the notice
     "notice": {...},            the cloud's document: AWS's instance-action, {"preempted": "TRUE"}
                                 on GCP, Azure's Preempt event
     "checkpoints": {"store": "aws <bucket>" | null, "state": "uploading"|"uploaded"|"failed"|"none",
                     "keys": [object keys written, newest first], "error": "..." (when failed)}}
On a cloud with a bucket the marker is also put at `.preempted/<job id>.json` there, before the
checkpoints and again after them: a preempted VM's disk may be deleted with it, and the caller
can still tell a preemption from a crash with its own credentials.
"""

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import blobs  # beside this file on the node
import node_checkpoints

PREEMPTED = "preempted.json"  # in a job's folder; the recovery on the caller's side reads it
MARKERS = ".preempted"  # in the bucket: `.preempted/<job id>.json`, a copy of the job's marker
POLL_S = 5.0  # AWS: "check for these interruption notices every 5 seconds"
AZURE_EVENTS_API = "2020-07-01"
AZURE_COMPUTE_API = "2021-02-01"


def _open(req):
    with blobs._metadata_opener().open(req, timeout=blobs.TIMEOUT_S) as r:
        return r.read().decode()


def aws_notice():
    token = blobs.aws_imds_token()
    try:
        text = blobs.aws_imds_get("spot/instance-action", token)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None  # no interruption scheduled
        raise
    return json.loads(text)


def gcp_notice():
    req = urllib.request.Request(f"{blobs.gce_url()}/computeMetadata/v1/instance/preempted", headers={"Metadata-Flavor": "Google"})
    value = _open(req).strip()
    return {"preempted": value} if value.upper() == "TRUE" else None


_azure_name = []


def azure_notice():
    base = blobs.imds_url()
    if not _azure_name:  # the VM's own name: Resources names the VMs an event is for
        _azure_name.append(_open(urllib.request.Request(
            f"{base}/metadata/instance/compute/name?api-version={AZURE_COMPUTE_API}&format=text", headers={"Metadata": "true"})).strip())
    doc = json.loads(_open(urllib.request.Request(
        f"{base}/metadata/scheduledevents?api-version={AZURE_EVENTS_API}", headers={"Metadata": "true"})))
    for event in doc.get("Events") or []:
        if event.get("EventType") == "Preempt" and (not event.get("Resources") or _azure_name[0] in event["Resources"]):
            return event
    return None


NOTICES = {"aws": aws_notice, "gcp": gcp_notice, "azure": azure_notice}


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _since_boot(path):
    """The JSON at `path` if written since this boot (a VM that was stopped, not deleted, by its
    preemption starts with a clean slate), else None."""
    try:
        with open("/proc/stat") as f:
            boot = next((float(l.split()[1]) for l in f if l.startswith("btime ")), 0.0)
        if os.stat(path).st_mtime < boot:
            return None
    except OSError:
        return None
    return _read_json(path)


class Watch:
    """What the watchdog does each poll on a cloud node: look for a notice (on the watchdog's own
    thread, every poll), copy checkpoints (on a worker thread, one pass at a time, so a long
    upload never keeps the next look for a notice waiting)."""

    def __init__(self, folder, root, cloud, store, log):
        self.folder, self.root, self.cloud, self.log = folder, root, cloud, log
        self.store = blobs.Store(store) if store else None
        self.uploads = os.path.join(folder, "uploads")  # per job: what was sent (node_checkpoints.upload's state)
        self.notice = _since_boot(os.path.join(folder, PREEMPTED))  # seen before the watchdog's restart: handled once
        self._work, self._busy, self._cond = [], False, threading.Condition()
        if self.store is not None:
            threading.Thread(target=self._worker, name="checkpoint-uploads", daemon=True).start()

    def poll(self, running):
        """`running`: the folders of the running jobs (watchdog.running_jobs)."""
        if self.cloud and self.notice is None:
            try:
                notice = NOTICES[self.cloud]()
            except Exception as e:  # noqa: BLE001 - a look that fails is no notice; the next one tries again
                self.log(f"could not read the {self.cloud} preemption notice ({e!r})")
                notice = None
            if notice is not None:
                self.preempted(notice, running)
                return
        if self.store is not None:
            self._submit("copy", running)

    def _submit(self, kind, running, first=False):
        with self._cond:
            if kind == "copy" and (self._busy or self._work):
                return  # the pass under way, or the one waiting, takes what is new
            self._work.insert(0 if first else len(self._work), (kind, list(running)))
            self._cond.notify_all()

    def _worker(self):
        while True:
            with self._cond:
                while not self._work:
                    self._cond.wait()
                kind, running = self._work.pop(0)
                self._busy = True
            try:
                (self.copy if kind == "copy" else self.push)(running)
            except Exception as e:  # noqa: BLE001 - logged; the next pass tries again
                self.log(f"checkpoint pass failed ({e!r})")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout):
        """Wait, at most `timeout` s, until no pass is waiting or under way (before the node stops)."""
        end = time.time() + timeout
        with self._cond:
            while (self._work or self._busy) and time.time() < end:
                self._cond.wait(max(0.1, end - time.time()))

    def preempted(self, notice, running):
        self.notice = {"by": "preemption", "cloud": self.cloud, "at": time.time(), "notice": notice, "node": socket.gethostname()}
        write_json(os.path.join(self.folder, PREEMPTED), self.notice)
        self.log(f"preemption notice from {self.cloud}: {json.dumps(notice)}")
        state = "uploading" if self.store else "none"
        for job in running:  # the marker first: the node may be gone before the upload ends
            self._mark(job, {"store": self.store and self.store.describe(), "state": state, "keys": []})
        if self.store is not None:
            with self._cond:
                self._work = [w for w in self._work if w[0] != "copy"]
            self._submit("push", running, first=True)  # next, once the file in flight (if any) is done

    def push(self, running):
        """At a notice: each running job's marker, then its complete checkpoints, the newest first,
        then the marker again saying what went; the marker goes to the bucket too (MARKERS), since
        the node's disk may go with the node."""
        for job in running:
            self._publish(job)
        for job in running:
            try:
                keys = self._upload(job, final=True, newest_first=True)
                self._mark(job, {"store": self.store.describe(), "state": "uploaded", "keys": keys})
            except Exception as e:  # noqa: BLE001 - said in the marker; nothing else to do in seconds
                self._mark(job, {"store": self.store.describe(), "state": "failed", "keys": [], "error": repr(e)})
                self.log(f"checkpoints of {job} not uploaded ({e!r})")
            self._publish(job)

    def _publish(self, job):
        try:
            self.store.put(os.path.join(job, PREEMPTED), f"{MARKERS}/{os.path.basename(job)}.json")
        except Exception as e:  # noqa: BLE001 - the marker on the node's disk is still there
            self.log(f"preemption marker of {job} not uploaded ({e!r})")

    def _mark(self, job, checkpoints):
        try:
            write_json(os.path.join(job, PREEMPTED), {**self.notice, "checkpoints": checkpoints})
        except OSError as e:
            self.log(f"could not mark {job} as preempted ({e!r})")

    def copy(self, running):
        """Each running job's newly complete checkpoints; a job that just ended, all it left."""
        live = set(running)
        for job in self._job_folders():
            job_id = os.path.basename(job)
            state = _read_json(os.path.join(self.uploads, job_id + ".json")) or {}
            if state.get("done"):
                continue
            ended = os.path.exists(os.path.join(job, "exit_code"))
            if not ended and job not in live:
                continue  # not started yet, or from before a reboot
            try:
                self._upload(job, final=ended, state=state)
            except Exception as e:  # noqa: BLE001 - the next poll tries again; the job goes on
                self.log(f"checkpoint upload for job {job_id}: {e!r}")
                continue
            if ended:
                state["done"] = True
                self._save(job_id, state)

    def _job_folders(self):
        jobs = os.path.join(self.root, "jobs")
        try:
            return sorted(os.path.join(jobs, j) for j in os.listdir(jobs))
        except OSError:
            return []

    def _save(self, job_id, state):
        os.makedirs(self.uploads, exist_ok=True)
        write_json(os.path.join(self.uploads, job_id + ".json"), state)

    def _upload(self, job, final, newest_first=False, state=None):
        job_id = os.path.basename(job)
        if state is None:
            state = _read_json(os.path.join(self.uploads, job_id + ".json")) or {}
        ckpt = os.path.join(job, "checkpoints")  # $CLOUDTRAIN_CHECKPOINT_DIR (jobs/checkpoints.py node_dir)
        if not os.path.isdir(ckpt):
            return []
        try:
            keys = node_checkpoints.upload(ckpt, job_id, self.store.put, state, final=final, newest_first=newest_first)
        finally:
            self._save(job_id, state)  # what went, even when a later file failed
        for key in keys:
            self.log(f"checkpoint uploaded: {key}")
        return keys
