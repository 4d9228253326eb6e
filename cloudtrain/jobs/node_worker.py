"""One torchrun worker, run ON THE NODE (stdlib only, Linux):
`python node_worker.py FAILURES_FILE AGENT_PID_FILE PROGRAM ARGS...`.

torchrun starts each worker in a session of its own, out of reach of the job's session
(node_track.py), and names a failure only in text. So each worker runs under this: the
program is its child and dies with it (PR_SET_PDEATHSIG); this process watches its torchrun
agent and kills the program if the agent is gone (a KILLed agent would otherwise leave it
running); and a program that fails appends "LOCAL_RANK RANK CODE ATTEMPT" to FAILURES_FILE,
first failure first, so `run` can name the node and local rank. The exit status is the
program's (a signal is re-raised), so torchrun sees what it would have seen.

The agent's pid comes from AGENT_PID_FILE (run.sh writes torchrun's pid there before it
starts), not from getppid() at start: an agent KILLed before this process first ran has
already handed it to init or a subreaper, and getppid() would name that one instead.
"""

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1


def _agent_pid(pid_file: str):  # -> int | None (no annotation: any node Python parses this)
    try:
        with open(pid_file) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def main(failures: str, agent_pid_file: str, argv: list[str]) -> int:
    agent = _agent_pid(agent_pid_file)
    if agent is None or os.getppid() != agent:
        # The agent is gone already (or was never ours): starting the program would leave it
        # running with nobody to stop it. torchrun, if still there, sees a failed worker.
        sys.stderr.write(f"node_worker: torchrun agent {agent} is not this worker's parent {os.getppid()}; not starting\n")
        return 1
    me = os.getpid()
    child = os.fork()
    if child == 0:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != me:  # the wrapper died before the death signal was armed
                os._exit(137)
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    # torchrun signals the worker's whole process group: the program gets TERM itself; this
    # process waits to report how it ended.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            break
        if os.getppid() != agent:  # the agent died without stopping us
            os.kill(child, signal.SIGKILL)
        time.sleep(0.2)
    code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    if code != 0:
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        line = f"{os.environ.get('LOCAL_RANK', '?')} {os.environ.get('RANK', '?')} {code} {attempt}\n"
        try:
            fd = os.open(failures, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, line.encode())  # one small O_APPEND write: lines never interleave
            os.close(fd)
        except OSError:
            pass
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot have a handler, nor need one reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
