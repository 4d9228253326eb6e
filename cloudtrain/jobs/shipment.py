"""What ships to the nodes for one job: decided, and refused if need be, before anything exists.

On top of the ignore rules (workdir.py): the cloudtrain home, `~/.ssh` and any file that holds a
private key never ship, whatever they are called; a link ships only when what it points at ships
too (as a relative link), never followed out of the workdir; the script the user named always
ships (its content, when it is a link out of the workdir), and a script the rules leave out is
refused. A big workdir is announced; one over `--max-upload` is refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cloudtrain import state
from cloudtrain.progress import human  # one size format for the lines and the live bars; runner.py calls shipping.human
from cloudtrain.jobs import destination
from cloudtrain.errors import BadInput
from cloudtrain.jobs.workdir import candidates, ignored_by, link_target, total_size
from cloudtrain.spec import JobSpec

Say = Callable[[str], None]

ANNOUNCE_OVER = 100 * 1024**2  # a workdir above this is announced before it ships (README: "What ships")
_KEY_HEAD = 64 * 1024  # key files are a few KiB; a key buried deeper in a big file is not a key file
# PEM ("RSA", "EC", "DSA", "OPENSSH", "ENCRYPTED", plain PKCS#8), PGP and PuTTY private keys.
_PRIVATE_KEY = re.compile(rb"(?m)^-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|^PuTTY-User-Key-File-\d+:")
_MAX_NAMED = 8  # left-out entries named in the one warning line


@dataclass(frozen=True)
class Shipment:
    spec: JobSpec
    files: list[str]  # relative to the workdir: regular files, links that ship as links, the script
    size: int  # bytes that travel to each node
    left_out: list[str]  # "name (why)", for the one warning line


def holds_private_key(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return bool(_PRIVATE_KEY.search(f.read(_KEY_HEAD)))
    except OSError:
        return False  # unreadable: tar will say so when it ships


Roots = list[tuple[Path, str]]  # folders that never ship, and what each is


def _protected() -> Roots:
    return [(state.home(), "the cloudtrain home"), (Path("~/.ssh").expanduser().resolve(), "your SSH folder")]


def _protected_entry(roots: Roots, workdir: Path, rel: str, path: Path) -> str | None:
    for root, what in roots:
        if path.is_relative_to(root):
            return f"{root.relative_to(workdir).as_posix()}/ ({what})" if root.is_relative_to(workdir) else f"{rel} ({what})"
    return None


def _guarded(roots: Roots, workdir: Path, rel: str, real: Path) -> str | None:
    """Why the file `rel` (at `real`) must never ship, as a left-out entry; None when it may."""
    if entry := _protected_entry(roots, workdir, rel, real):
        return entry
    return f"{rel} (a private key)" if holds_private_key(real) else None


def plan(spec: JobSpec, exclude: list[Path], say: Say) -> Shipment:
    """Decide what ships; BadInput (nothing shipped, nothing created) when it cannot be what was meant."""
    wd, script, roots = spec.workdir, spec.script_rel, _protected()
    names = candidates(wd, exclude)
    if script is not None and script not in names:  # None: a task's shell `run`
        why = ignored_by(wd, script, exclude) or "the workdir's ignore rules"
        raise BadInput(f"script {script} would not ship: it is left out by {why}", "remove that rule or rename the script, then run again")
    left_out: dict[str, None] = {}  # an ordered set of "name (why)"
    files: list[str] = []
    links: list[str] = []
    for rel in names:
        if os.path.islink(wd / rel):
            links.append(rel)
        elif entry := _guarded(roots, wd, rel, wd / rel):
            left_out[entry] = None
        else:
            files.append(rel)
    shipped = set(files)
    for rel in links:
        real = Path(os.path.realpath(wd / rel))
        if entry := _protected_entry(roots, wd, rel, wd / rel):
            left_out[entry] = None
        elif link_target(wd, rel, shipped) is not None:
            files.append(rel)
        elif rel == script:  # what the user asked to run ships as the file it names
            if entry := _guarded(roots, wd, rel, real):
                raise BadInput(f"script {script} points at {real}, which never ships: {entry}", "run a copy of the script that holds no secret")
            files.append(rel)
        else:
            where = "something that does not ship" if real.is_relative_to(wd) else "outside the workdir"
            left_out[f"{rel} -> {os.readlink(wd / rel)} (a link to {where}; not followed)"] = None
    if script is not None and script not in files:
        raise BadInput(f"script {script} never ships: {_guarded(roots, wd, script, wd / script)}", "run a script that holds no secret, outside the cloudtrain home and ~/.ssh")
    files.sort()
    secret_files = {str(wd / rel) for rel in files} & {str(Path(f)) for f in spec.secrets.values() if f is not None}
    if secret_files:  # it would sit on every node's disk: a --secret's value travels only to the job's environment
        raise BadInput(f"secret file {sorted(secret_files)[0]} is inside the workdir and would ship to the nodes", "move it out of the workdir, or leave it out with .cloudtrainignore")
    size = total_size(wd, files)

    def biggest() -> str:
        by_size = sorted(files, key=lambda r: -(wd / r).stat().st_size)[:3]
        return ", ".join(f"{rel} {human((wd / rel).stat().st_size)}" for rel in by_size)

    if spec.max_upload is not None and size > spec.max_upload:
        raise BadInput(
            f"the workdir {wd} is {human(size)} to ship, over --max-upload {human(spec.max_upload)} (biggest: {biggest()})",
            "leave big files out with .cloudtrainignore, choose a smaller --workdir, or raise --max-upload",
        )
    # Said only once nothing is refused: a refusal is one line.
    if left_out:
        named = list(left_out)
        more = f", and {len(named) - _MAX_NAMED} more" if len(named) > _MAX_NAMED else ""
        say(f"warning: left out of the upload: {', '.join(named[:_MAX_NAMED])}{more}")
    if size > ANNOUNCE_OVER:
        say(f"the workdir {wd} is {human(size)} to ship to each node (biggest: {biggest()}); cap it with --max-upload or leave files out with .cloudtrainignore")
    return Shipment(spec=spec, files=files, size=size, left_out=list(left_out))


def prepare(spec: JobSpec, say: Say) -> Shipment:
    """Everything checked before a job exists: where its outputs land, then what ships."""
    runs = Path.cwd() / "runs"  # the default ./runs/<job-id> is new per job: checked for room, never for emptiness
    destination.check(spec.output or runs, spec.output_mode, spec.workdir, explicit=spec.output is not None)
    # Earlier runs' outputs never travel back up, wherever they landed.
    return plan(spec, [p for p in (spec.output, runs) if p is not None], say)
