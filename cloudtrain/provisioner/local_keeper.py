"""A local node's keeper, run as a file (stdlib only, Linux): `python -I -S local_keeper.py SSHD ARGS...`.

A local node is not a VM that can be switched off, so everything it starts must stay findable.
The keeper makes itself a child subreaper and starts sshd: sshd daemonizes into its child,
and every process the node starts (sessions, jobs, a double-forked `setsid env -i` daemon)
that loses its parent is re-parented here instead of to init. `down` then stops every
descendant of the node's keepers. The keeper prints sshd's start-up exit status on stdout,
reaps orphans, and exits once it has no child left.
"""

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("no-subreaper", flush=True)
        return 1
    # `down` stops the keeper last, once its descendants are gone; a stray TERM must not
    # orphan them to init first.
    signal.signal(signal.SIGTERM, lambda *_: None)
    started = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = started.stderr.decode(errors="replace").strip().replace("\n", " ")
    print(f"{started.returncode} {err}".strip(), flush=True)
    os.close(1)  # the caller reads up to end-of-file
    os.open(os.devnull, os.O_WRONLY)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
