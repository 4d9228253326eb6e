"""The node's watchdog, run ON the node by its python3 (stdlib only, Linux):
`python3 watchdog.py WATCHDOG_DIR`, WATCHDOG_DIR holding config.json (written by
cloudtrain/autostop.py). It runs without the user's machine: a systemd unit on VMs, a detached
process on local nodes.

Busy means any of: a cloudtrain job running (a `jobs/<id>/pid` written since boot, no
`exit_code`, its session leader alive); a bootstrap step running (a live `bootstrap/steps/*.pid`,
written by bootstrap/apply.py); an interactive session (a process with a pseudo-terminal as
controlling tty; on a local node only those carrying the node's mark). After `autostop_s`
without any, or at the deadline (`max_duration_s` after the first start), the watchdog records
why in stopped.json and runs the stop command. At the deadline the jobs' sessions first get
TERM, then KILL after `grace_s`: their partial outputs stay on the node's disk. Before it
signals a job, the watchdog writes ENDED_BY into that job's folder: whoever reads the job's
exit status (cloudtrain/jobs/collect.py) can then name the watchdog, even when the job's end
reaches it before the node has stopped.

On a cloud node, config.json also names the cloud whose preemption notice to read (`preempt`)
and the cluster's checkpoint bucket (`checkpoints`): each poll then goes through preempt.py,
which marks the running jobs preempted on a notice and copies their checkpoints to the bucket.
"""

import json
import os
import signal
import subprocess
import sys
import time

PTS_MAJORS = range(136, 144)  # Unix98 pseudo-terminals (Documentation/admin-guide/devices.txt)
FLUSH_S = 120.0  # at most this long for the checkpoint uploads before the node stops itself
ENDED_BY = "ended_by.json"  # in a job's folder; the same name is in cloudtrain/jobs/collect.py


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _boot_time():
    for line in _read("/proc/stat").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _alive(pid):
    stat = _read(f"/proc/{pid}/stat")
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _live_pidfiles(folder, pattern_suffix, skip_if=None):
    """Pids named by `folder/*<suffix>` files written since boot whose process is alive."""
    boot, found = _boot_time(), []
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        path = os.path.join(folder, name)
        if not name.endswith(pattern_suffix) or (skip_if and skip_if(path)):
            continue
        try:
            if os.stat(path).st_mtime < boot:
                continue  # from before a reboot: that pid means nothing now
        except OSError:
            continue
        pid = _read(path)
        if pid.isdigit() and _alive(int(pid)):
            found.append(int(pid))
    return found


def running_jobs(root, folders=None):
    """Session ids of the node's running jobs (their folders appended to `folders` if given)."""
    jobs, found = os.path.join(root, "jobs"), []
    try:
        ids = os.listdir(jobs)
    except OSError:
        return found
    for job_id in ids:
        job = os.path.join(jobs, job_id)
        if os.path.exists(os.path.join(job, "exit_code")):
            continue
        live = _live_pidfiles(job, "pid", skip_if=lambda p: os.path.basename(p) != "pid")
        found += live
        if live and folders is not None:
            folders.append(job)
    return found


def running_steps(root):
    return _live_pidfiles(os.path.join(root, "bootstrap", "steps"), ".pid")


def interactive_sessions(marker):
    """Pids with a pseudo-terminal as controlling tty (carrying `marker` in their environment
    where one is given: on a local node, the machine's own terminals are not the node's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _read(f"/proc/{entry}/stat").rsplit(")", 1)[1].split()
            tty = int(fields[4])
        except (IndexError, ValueError):
            continue
        if fields[0] == "Z" or (tty >> 8) & 0xFFF not in PTS_MAJORS:
            continue
        if marker:
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker.encode() not in f.read().split(b"\0"):
                        continue
            except OSError:
                continue
        found.append(int(entry))
    return found


def busy(root, marker):
    """What keeps the node up, in words; empty when idle."""
    why = []
    if running_jobs(root):
        why.append("job")
    if running_steps(root):
        why.append("bootstrap step")
    if interactive_sessions(marker):
        why.append("interactive session")
    return why


def _busy_or_unknown(folder, root, marker):
    """A look that fails (a kernel without some /proc field, a race) counts as busy: the
    watchdog never stops a node because it could not see what runs."""
    try:
        return bool(busy(root, marker))
    except Exception as e:  # noqa: BLE001 - logged; the next look tries again
        log(folder, f"could not tell whether the node is busy ({e!r}); counting it busy")
        return True


def end_jobs(folder, root, grace, reason):
    """Mark every running job as ended by the watchdog (`reason`), TERM its session, then KILL
    what is left after `grace` seconds."""
    folders = []
    sessions = running_jobs(root, folders)
    for job in folders:  # before any signal: the job's exit status must never come first
        try:
            write_json(os.path.join(job, ENDED_BY), {"by": "watchdog", "reason": reason, "at": time.time()})
        except OSError as e:
            log(folder, f"could not mark {job} ({e!r})")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for sid in sessions:
            try:
                os.killpg(sid, sig)
            except OSError:
                pass
        end = time.time() + grace
        while sig == signal.SIGTERM and time.time() < end and running_jobs(root):
            time.sleep(0.2)
        sessions = running_jobs(root)
        if not sessions:
            return


def _watch(folder, root, watch):
    try:
        jobs = []
        running_jobs(root, jobs)
        watch.poll(jobs)
    except Exception as e:  # noqa: BLE001 - logged; autostop and the deadline go on regardless
        log(folder, f"preemption watch failed ({e!r})")


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def log(folder, text):
    with open(os.path.join(folder, "log.txt"), "a") as f:
        f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + text + "\n")


def main(folder):
    cfg = json.loads(_read(os.path.join(folder, "config.json")))
    root, marker = cfg["root"], cfg.get("session_marker") or ""
    autostop, poll, grace = cfg.get("autostop_s") or 0, cfg.get("poll_s", 10.0), cfg.get("grace_s", 30.0)
    # The deadline counts from the first start and survives the watchdog's own restarts.
    state_path = os.path.join(folder, "state.json")
    state = json.loads(_read(state_path) or "{}")
    if "started_at" not in state:
        state["started_at"] = time.time()
        write_json(state_path, state)
    deadline = state["started_at"] + cfg["max_duration_s"] if cfg.get("max_duration_s") else None
    watch = None
    if cfg.get("preempt") or cfg.get("checkpoints"):
        try:
            import preempt  # beside this file (autostop.py ships it)

            if cfg.get("metadata_url"):  # tests only (autostop.py)
                os.environ["CLOUDTRAIN_IMDS_URL"] = os.environ["CLOUDTRAIN_GCE_METADATA_URL"] = cfg["metadata_url"]
            watch = preempt.Watch(folder, root, cfg.get("preempt"), cfg.get("checkpoints"), lambda text: log(folder, text))
            poll = min(poll, preempt.POLL_S)  # a notice leaves 30 s (GCP, Azure) to two minutes (AWS)
        except Exception as e:  # noqa: BLE001 - autostop and the deadline must go on without it
            log(folder, f"no preemption watch ({e!r})")
    write_json(os.path.join(folder, "pid.json"), {"pid": os.getpid()})
    log(folder, f"watching {root}: autostop {autostop}s, deadline {deadline}")
    last_busy = time.time()
    while True:
        if watch is not None:  # first: a notice leaves seconds
            _watch(folder, root, watch)
        now = time.time()
        reason = None
        if deadline is not None and now >= deadline:
            reason = "max-duration"
            log(folder, "deadline reached: ending jobs")
            end_jobs(folder, root, grace, reason)
        elif _busy_or_unknown(folder, root, marker):
            last_busy = now
        elif autostop and now - last_busy >= autostop:
            reason = "autostop"
        if reason and watch is not None:  # what the ended jobs left goes to the bucket first
            _watch(folder, root, watch)
            watch.flush(FLUSH_S)
        if reason:
            write_json(os.path.join(folder, "stopped.json"), {"reason": reason, "at": time.time()})
            log(folder, f"stopping ({reason}): {cfg['stop_command']}")
            # Its own session: on a local node the stop ends this process too.
            subprocess.Popen(cfg["stop_command"], stdin=subprocess.DEVNULL, start_new_session=True)
            return 0
        time.sleep(poll)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
