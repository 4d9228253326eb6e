"""A job's session leader, run ON THE NODE (stdlib only, Linux): `python node_track.py JOB_DIR`.

A job is tracked by its session, not by a wrapper it can kill. This process is started with
setsid, so its pid (the job's `pid` file) is the job's session id. It makes itself a child
subreaper, runs `bash run.sh` (which records the program's pid and exit status), and stays
until no other process of its session is left. A program that kills its own wrapper
(`kill -9 $PPID`) is re-parented here, so its exit status is still known when it ends.
`exit_code` is written once the program has ended and every other process of its session
too (or, for a helper it left behind, after `linger` seconds): its presence means the job is done.
"""

import ctypes
import os
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.5
POLL_FIRST_S = 0.01  # polls start quick and slow to POLL_S: a short job's end shows at once


def _code(status: int) -> int:
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _session_has_others(sid: int, me: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces and ")"
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            return True
    return False


def _read(path: str) -> str:  # relative to the job's folder, our cwd
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True
    except PermissionError:
        return False


def _out_bytes() -> int:
    """What the job left in out/ and its log: collect brings that little over the control
    connection, without starting OpenSSH's master (issue 9: a no-op run)."""
    total = os.path.getsize("log.txt") if os.path.exists("log.txt") else 0
    for dirpath, _, names in os.walk("out"):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def main(job_dir: str, linger: float) -> None:
    os.chdir(job_dir)
    job_dir = os.getcwd()  # absolute: the folder may be removed under us
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # without it, a killed wrapper's status is the wrapper's (137), not the program's
    # `_stop` TERMs the whole session; this process stays to see the rest end (a job that
    # traps TERM to checkpoint takes a while) and is KILLed with them if they do not.
    signal.signal(signal.SIGTERM, lambda *_: None)
    # A child's end wakes the poll below at once (the wrapper's end is the job's, for a short
    # job); the pipe is close-on-exec, so the job never sees it.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    me, sid = os.getpid(), os.getsid(0)
    wrapper = os.fork()
    if wrapper == 0:
        try:
            os.execvp("bash", ["bash", "run.sh"])
        finally:
            os._exit(127)
    statuses: dict[int, int] = {}
    main_pid: int | None = None
    deadline: float | None = None
    lingering = False
    pause = POLL_FIRST_S
    while True:
        while True:  # reap the wrapper and every orphan re-parented here
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            statuses[pid] = _code(status)
        if main_pid is None and _read("main_pid").isdigit():
            main_pid = int(_read("main_pid"))
        if wrapper in statuses:
            # The program has ended when its wrapper saw it end, or, the wrapper killed, when
            # it was reaped here (or is gone, where this could not become its reaper).
            main_over = bool(_read("main_exit")) or main_pid is None or main_pid in statuses or _gone(main_pid)
            if main_over:
                deadline = deadline if deadline is not None else time.monotonic() + linger
                if not _session_has_others(sid, me):
                    break
                if time.monotonic() > deadline:
                    lingering = True  # a helper it left behind: stopped with the node at `down`
                    break
        select.select([wake_r], [], [], pause)
        try:
            os.read(wake_r, 512)
        except BlockingIOError:
            pass
        pause = min(pause * 1.5, POLL_S)
    code = _read("main_exit") or str(statuses.get(main_pid, statuses[wrapper]) if main_pid else statuses[wrapper])
    try:
        if lingering:
            with open("log.txt", "a") as f:
                f.write(f"cloudtrain: the job exited {code} but left processes running in its session after {linger:.0f}s; they stay until `cloudtrain down`\n")
        with open("out_bytes.tmp", "w") as f:
            f.write("%d\n" % _out_bytes())
        os.replace("out_bytes.tmp", "out_bytes")  # before exit_code: seen together by collect
        with open("exit_code.tmp", "w") as f:
            f.write(code + "\n")
        os.replace("exit_code.tmp", "exit_code")  # a reader never sees a half-written status
    except OSError:
        pass  # the job's folder was removed: the follower reports that


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 10.0)
