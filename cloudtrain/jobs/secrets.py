"""Secrets: from the caller's environment or a file into the job's environment, and nowhere else.

The values are read here when the job starts and sent as JSON over the SSH channel's stdin to a
small Python program on the node (its code rides in argv; the values never do). It puts them into
its own environment, then execs the command that follows it (a task's setup) or starts it detached
in a session of its own (the job's session leader, as `setsid nohup` did) and writes its pid. No
file on either side holds a value: not run.sh, not a record, not a log; run.json names them only.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from cloudtrain.errors import BadInput
from cloudtrain.layout import JobPaths, NodePaths
from cloudtrain.remote import SshRemote

# Runs ON THE NODE: `python -I -S -c READER CMD...` or `... -c READER --detach PIDFILE CMD...`.
READER = r"""
import json, os, signal, sys
os.environ.update(json.loads(sys.stdin.buffer.read() or b"{}"))
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
argv = sys.argv[1:]
if argv[0] != "--detach":
    os.execvp(argv[0], argv)
pidfile, argv = argv[1], argv[2:]
r, w = os.pipe()  # not inherited: closed by a successful exec, so EOF on r means it started
pid = os.fork()
if pid == 0:
    try:
        os.close(r)
        os.setsid()
        os.dup2(null, 1)
        os.dup2(null, 2)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.execvp(argv[0], argv)
    finally:
        os.write(w, b"x")
        os._exit(127)
os.close(w)
failed = os.read(r, 1)
with open(pidfile + ".tmp", "w") as f:
    f.write(f"{pid}\n")
os.replace(pidfile + ".tmp", pidfile)
sys.exit(127 if failed else 0)
"""


def values(sources: dict[str, str | None]) -> dict[str, str]:
    """NAME -> value, from the caller's environment (source None) or the file named (one trailing
    newline dropped: `echo TOKEN > file` means TOKEN). Read once, when the job starts."""
    found: dict[str, str] = {}
    for name, path in sources.items():
        if path is None:
            value = os.environ.get(name)
            if value is None:
                raise BadInput(f"secret {name} is not set in your environment", f"export {name}=... first, or pass --secret {name}=@FILE")
        else:
            try:
                value = Path(path).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise BadInput(f"cannot read secret {name} from {path}: {e.__class__.__name__}", "name a readable text file that holds the value") from e
            value = value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value
        if "\0" in value:
            raise BadInput(f"secret {name} holds a NUL byte, which no environment variable can", "store the value base64-encoded and decode it in the job")
        found[name] = value
    return found


def payload(env: dict[str, str]) -> bytes:
    return json.dumps(env).encode()


def reader(python: str, *argv: str) -> str:
    """The node command that takes its environment from stdin, then runs argv (already quoted)."""
    return f"{shlex.quote(python)} -I -S -c {shlex.quote(READER)} {' '.join(argv)}"


def start(remote: SshRemote, paths: NodePaths, job: JobPaths, linger: float, secrets: dict[str, str]) -> None:
    """Start the job's session leader (track.py) detached, with the secrets in its environment
    (so in run.sh's and the program's); as runner.submit's start does without secrets."""
    q = shlex.quote
    remote.run(
        f"cd {q(job.dir)} && touch {q(job.log)} && "
        + reader(paths.python, "--detach", q(job.pid), q(paths.python), "-I", "-S", "track.py", ".", q(str(linger))),
        stdin=payload(secrets),
    )
