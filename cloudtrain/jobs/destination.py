"""Where a job's outputs land, checked before the job starts and claimed when it is submitted.

A destination that cannot be made or written, or has no room, is refused before anything ships,
so no job ends owing outputs to a folder that can never take them. A non-empty `--output` needs
`--output-mode`: `merge` keeps other files and overwrites same names; `replace` empties it first,
and only a folder cloudtrain filled (it holds MARKER, or a run.json and manifest.json of a job),
so a mistyped path never deletes a user's unrelated folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from cloudtrain import state
from cloudtrain.errors import BadInput

MARKER = ".cloudtrain-output"  # which job fills this folder; written when the job is submitted
MIN_FREE = 16 * 1024**2  # less than this cannot even hold a log and run.json
_MODES_HINT = "pass --output-mode merge (keep other files, overwrite same names) or --output-mode replace (empty it first), or choose another --output"


def _existing_ancestor(path: Path) -> Path:
    while not os.path.lexists(path):
        path = path.parent
    return path


def _flag(output: Path, explicit: bool) -> str:
    return f"--output {output}" if explicit else f"the outputs folder {output}"


def _made_by_cloudtrain(folder: Path) -> bool:
    if (folder / MARKER).is_file():
        return True
    try:  # a folder filled before the marker existed: a job's run.json beside its manifest.json
        run = json.loads((folder / "run.json").read_text())
        return isinstance(run, dict) and "job_id" in run and (folder / "manifest.json").is_file()
    except (OSError, ValueError):
        return False


def check(output: Path, mode: str | None, workdir: Path, explicit: bool = True) -> None:
    """BadInput unless `output` exists or can be made, is writable, has room, and (when the user
    named it: `explicit`) is empty or has a mode saying what to do with what is there. Creates nothing."""
    what = _flag(output, explicit)
    base = _existing_ancestor(output)
    if not base.is_dir():
        raise BadInput(f"{what} cannot be made: {base} is not a folder", "choose another --output")
    # Probed by making something, not by mode bits: root ignores those, /proc and read-only
    # mounts do not.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cloudtrain-probe-", dir=base))
    except OSError as e:
        raise BadInput(f"{what} cannot be written: {base}: {e.strerror or e}", "choose a folder you can write to as --output") from e
    try:
        st = os.statvfs(base)
    except OSError as e:
        raise BadInput(f"{what}: cannot read how much room {base} has: {e.strerror or e}", "choose another --output") from e
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE:
        raise BadInput(f"{what} has {free // 1024} KiB free, under the {MIN_FREE // 1024**2} MiB a job needs at least", "free some space or choose another --output")
    try:
        if not explicit or not output.is_dir() or not any(output.iterdir()):
            return
    except OSError as e:
        raise BadInput(f"{what} cannot be read: {e.strerror or e}", "choose a folder you can read and write as --output") from e
    if mode is None:
        raise BadInput(f"{what} is not empty", _MODES_HINT)
    if mode == "replace":
        _check_replaceable(output, workdir)


def _check_replaceable(output: Path, workdir: Path) -> None:
    for inside, what in ((workdir, "the workdir"), (state.home(), "the cloudtrain home"), (Path.cwd().resolve(), "the current folder")):
        if inside.is_relative_to(output):
            raise BadInput(f"--output-mode replace would empty {output}, which holds {what}", "choose another --output, or --output-mode merge")
    if not _made_by_cloudtrain(output):
        raise BadInput(
            f"--output {output} holds files cloudtrain did not put there; replace empties only a folder a cloudtrain job filled",
            "choose another --output, or pass --output-mode merge to keep its files",
        )


def claim(output: Path, mode: str | None, job_id: str, workdir: Path, explicit: bool = True) -> None:
    """Make `output` this job's (after `check`): create it, empty it under `replace`, and write
    MARKER. Without a mode the marker is created exclusively, so of two jobs started into one
    folder at once the second is refused instead of mixing files with the first."""
    check(output, mode, workdir, explicit)
    what = _flag(output, explicit)
    try:
        output.mkdir(parents=True, exist_ok=True)
        if mode == "replace":
            for entry in output.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if mode is None else os.O_TRUNC)
        fd = os.open(output / MARKER, flags, 0o644)
    except FileExistsError as e:
        raise BadInput(f"{what} is being filled by another job", _MODES_HINT) from e
    except OSError as e:
        raise BadInput(f"{what} cannot be written: {e.strerror or e}", "choose a folder you can write to as --output") from e
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"job_id": job_id}) + "\n")


def release(output: Path, job_id: str) -> None:
    """Undo `claim` for a job whose outputs go elsewhere: remove `output` if it holds nothing but
    this job's marker; leave it alone otherwise (anything else in it is someone's)."""
    try:
        if [p.name for p in output.iterdir()] == [MARKER] and json.loads((output / MARKER).read_text()).get("job_id") == job_id:
            (output / MARKER).unlink()
            output.rmdir()
    except (OSError, ValueError, AttributeError):
        pass  # a folder we cannot read or tidy stays as it is; nothing is lost
