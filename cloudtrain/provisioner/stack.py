"""The only user of pulumi.automation: one cluster = one stack of the `cloudtrain` project.

State lives in a local file backend under the cloudtrain home (no Pulumi Cloud account),
secrets are encrypted with a generated passphrase kept 0600 beside it, and a user who sets
PULUMI_BACKEND_URL gets their own backend instead. Pulumi's exceptions stop here: callers see
ProvisionError / MissingTool with one actionable line.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from pathlib import Path
from typing import Any, Callable

import pulumi.automation as auto
import yaml

from cloudtrain import safefile, state
from cloudtrain.errors import MissingTool, ProvisionError
from cloudtrain.provisioner.pulumi_run import KILLED_MARKER, GracefulCommand, graceful

# Left in the work folder when pending operations were dropped from state: what they made is
# known by its tag only, and the sweep for it is owed until it succeeds (across `down` reruns).
SWEEP_OWED = ".cloudtrain-sweep-owed"

PROJECT = "cloudtrain"
SECRETS_PROVIDER = "passphrase"

OnOutput = Callable[[str], None]


def pulumi_home_dir() -> Path:
    """cloudtrain's own Pulumi folder: state backend and passphrase."""
    return state.home() / "pulumi"


def backend_url() -> str:
    """PULUMI_BACKEND_URL when the user set one, else a file backend under the cloudtrain home."""
    url = os.environ.get("PULUMI_BACKEND_URL")
    if url:
        return url
    # Owner-only, like the rest of the home: the state holds every stack's resources and outputs.
    return safefile.private_dir(pulumi_home_dir() / "state").as_uri()


def passphrase_file() -> Path:
    """The passphrase that encrypts stack secrets (host keys): generated once, 0600."""
    path = pulumi_home_dir() / "passphrase"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another cloudtrain made it first
            return path
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def _reason(err: auto.CommandError) -> str:
    """The most telling line of Pulumi's output: its 'error:' line, else the last non-empty one."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("error:"):
            return ln[len("error:") :].strip()
    return lines[-1] if lines else type(err).__name__


def _no_program() -> None:
    """Destroy and refresh never run the program; the inline workspace still needs one."""


class ClusterStack:
    """One cluster's stack: its name, backend, work folder; up / preview / destroy / outputs."""

    def __init__(
        self,
        name: str,
        work_dir: Path,
        program: Callable[[], None] = _no_program,
        command: auto.PulumiCommand | None = None,
        backend: str | None = None,
        on_output: OnOutput | None = None,
    ) -> None:
        self.name = name
        self.work_dir = work_dir
        self.program = program
        # Interrupt-safe: Ctrl-C lets the engine finish in-flight operations (pulumi_run.py).
        self.command: GracefulCommand | None = graceful(command) if command is not None else None
        self.backend = backend or backend_url()
        self.on_output = on_output
        self.pending: list[str] = []  # what the last destroy dropped from state

    @classmethod
    def of_cluster(cls, name: str, provider_dir: Path, **kw: Any) -> "ClusterStack":
        """The stack of cluster `name`: named after it, its work folder in the cluster's provider
        folder. Derivable from the name alone, so a cluster whose record is damaged can still be
        destroyed (on the current backend: PULUMI_BACKEND_URL if set, else the home's)."""
        return cls(name, provider_dir / "pulumi", **kw)

    # What destroy needs after a crash; saved in the cluster record before anything is created.
    def state(self) -> dict[str, Any]:
        return {"stack": self.name, "project": PROJECT, "backend_url": self.backend, "work_dir": str(self.work_dir)}

    @classmethod
    def from_state(cls, data: dict[str, Any], command: auto.PulumiCommand | None = None, on_output: OnOutput | None = None) -> "ClusterStack":
        return cls(data["stack"], Path(data["work_dir"]), command=command, backend=data["backend_url"], on_output=on_output)

    def options(self) -> auto.LocalWorkspaceOptions:
        # A fixed work folder keeps the stack settings (with the passphrase salt) between runs.
        self.work_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "PULUMI_BACKEND_URL": self.backend,
            "PULUMI_CONFIG_PASSPHRASE_FILE": str(passphrase_file()),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
        }
        return auto.LocalWorkspaceOptions(
            work_dir=str(self.work_dir),
            env_vars=env,
            secrets_provider=SECRETS_PROVIDER,
            project_settings=auto.ProjectSettings(
                name=PROJECT, runtime="python", backend=auto.ProjectBackend(url=self.backend)
            ),
            pulumi_command=self.command,
        )

    def _open(self, create: bool) -> auto.Stack:
        opener = auto.create_or_select_stack if create else auto.select_stack
        try:
            return opener(stack_name=self.name, project_name=PROJECT, program=self.program, opts=self.options())
        except auto.StackNotFoundError:
            raise
        except FileNotFoundError as e:
            raise MissingTool("the Pulumi CLI is not installed", "run `cloudtrain install-pulumi`") from e
        except auto.CommandError as e:
            raise ProvisionError(f"cannot open Pulumi stack {self.name!r}: {_reason(e)}", "check PULUMI_BACKEND_URL and the cloudtrain home") from e

    def qualified_name(self) -> str:
        """The stack's full name on its backend: DIY backends (file, s3, gs, azblob) put
        project-scoped stacks under the fixed organization `organization`."""
        org = "<your-org>" if self.backend.startswith(("https://", "http://")) else "organization"
        return f"{org}/{PROJECT}/{self.name}"

    def cli_hint(self, subcommand: str) -> str:
        """The exact shell line that runs `pulumi <subcommand>` on this stack where cloudtrain keeps it."""
        env = f"PULUMI_BACKEND_URL={shlex.quote(self.backend)} PULUMI_CONFIG_PASSPHRASE_FILE={shlex.quote(str(passphrase_file()))}"
        return f"{env} pulumi {subcommand} --stack {self.qualified_name()} --cwd {shlex.quote(str(self.work_dir))}"

    def _locked(self) -> ProvisionError:
        return ProvisionError(
            f"stack {self.name!r} is locked by another update",
            f"wait for it; if no pulumi process is running any more, release the lock with `{self.cli_hint('cancel --yes')}` and rerun",
        )

    def _configure(self, stack: auto.Stack, config: dict[str, str], secret_keys: frozenset[str]) -> None:
        stack.set_all_config({k: auto.ConfigValue(value=v, secret=k in secret_keys) for k, v in config.items()})

    def up(self, config: dict[str, str], secret_keys: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Create or update the stack's resources; return its outputs as plain values."""
        stack = self._open(create=True)
        try:
            self._configure(stack, config, secret_keys)
            result = stack.up(on_output=self.on_output, color="never")
        except auto.ConcurrentUpdateError as e:
            raise self._locked() from e
        except auto.CommandError as e:
            raise ProvisionError(
                f"pulumi up failed: {_reason(e)}", f"fix the cause, then rerun; `cloudtrain down --cluster {self.name}` removes what was made"
            ) from e
        return {k: v.value for k, v in result.outputs.items()}

    def refresh(self) -> None:
        """Read every resource back from the cloud: a VM the cloud deleted (a preempted spot
        node) leaves the state, so the next `up` creates it again (`launch --recover`)."""
        try:
            stack = self._open(create=False)
        except auto.StackNotFoundError as e:
            raise ProvisionError(f"cluster {self.name}'s Pulumi stack is gone", f"`cloudtrain down --cluster {self.name}` removes what is left") from e
        try:
            stack.refresh(on_output=self.on_output, color="never")
        except auto.ConcurrentUpdateError as e:
            raise self._locked() from e
        except auto.CommandError as e:
            raise ProvisionError(f"pulumi refresh failed: {_reason(e)}", f"check your cloud credentials; `cloudtrain down --cluster {self.name}` removes the cluster") from e

    def preview(self, config: dict[str, str], secret_keys: frozenset[str] = frozenset()) -> str:
        """What `up` would do, as Pulumi prints it. Creates nothing; a stack made just for it is removed."""
        existed = self._exists()
        stack = self._open(create=True)
        lines: list[str] = []
        try:
            self._configure(stack, config, secret_keys)
            result = stack.preview(on_output=lines.append, color="never")
        except auto.CommandError as e:
            raise ProvisionError(f"pulumi preview failed: {_reason(e)}", "fix the cause and rerun with --preview") from e
        finally:
            if not existed:
                stack.workspace.remove_stack(self.name)
        return "".join(lines) or result.stdout

    def _exists(self) -> bool:
        try:
            self._open(create=False)
        except auto.StackNotFoundError:
            return False
        return True

    def destroy(self) -> bool:
        """Destroy every resource and remove the stack. Idempotent: False when there was no stack.

        An update that was interrupted is resolved first: a lock our own killed CLI left is
        released, and pending operations are dropped from state (`pending` lists them, so the
        caller can say that a create the cloud may have accepted is now known by tag only)."""
        self.pending = []
        try:
            stack = self._open(create=False)
        except auto.StackNotFoundError:
            return False
        try:
            self._release_own_lock(stack)
            self.pending = self._clear_pending(stack)
            if self.pending:
                (self.work_dir / SWEEP_OWED).touch()
            for op in self.pending:
                self._say(f"cloudtrain: dropped the pending operation of an interrupted update: {op}")
            stack.destroy(on_output=self.on_output, color="never")
            stack.workspace.remove_stack(self.name)
        except auto.ConcurrentUpdateError as e:
            raise self._locked() from e
        except auto.CommandError as e:
            raise ProvisionError(
                f"pulumi destroy failed: {_reason(e)}", "rerun `cloudtrain down`; resources left behind carry the cloudtrain-cluster tag"
            ) from e
        (self.work_dir / KILLED_MARKER).unlink(missing_ok=True)
        return True

    def sweep_owed(self) -> bool:
        """Whether state lost a create (now or in an earlier destroy) that no sweep found yet."""
        return (self.work_dir / SWEEP_OWED).exists()

    def sweep_done(self) -> None:
        (self.work_dir / SWEEP_OWED).unlink(missing_ok=True)

    def _say(self, line: str) -> None:
        if self.on_output:
            self.on_output(line)

    def _cli(self, stack: auto.Stack, args: list[str]) -> auto.CommandResult:
        ws = stack.workspace
        return ws.pulumi_command.run(args, ws.work_dir, ws.env_vars)

    def _release_own_lock(self, stack: auto.Stack) -> None:
        """cloudtrain had to kill its CLI mid-update (KILLED_MARKER): the lock it held is stale.
        `pulumi cancel` removes it on file backends too (pulumi/pulumi#9100). Only then: a lock
        held by a live update elsewhere is reported, never broken."""
        if not (self.work_dir / KILLED_MARKER).exists():
            return
        try:
            self._cli(stack, ["cancel", "--yes", "--stack", self.name])
        except auto.CommandError:
            pass  # nothing was locked any more

    def _clear_pending(self, stack: auto.Stack) -> list[str]:
        """Pulumi's own repair for an interrupted update, done for the user: export the state,
        empty `pending_operations`, import it. Secrets stay encrypted (no --show-secrets)."""
        try:
            data = json.loads(self._cli(stack, ["stack", "export", "--stack", self.name]).stdout or "{}")
        except json.JSONDecodeError as e:
            raise ProvisionError(f"`pulumi stack export` of {self.name!r} gave no readable state ({e.msg})", "rerun `cloudtrain down`") from e
        deployment = data.get("deployment") if isinstance(data, dict) else None
        pending = (deployment or {}).get("pending_operations") or []
        if not pending:
            return []
        deployment["pending_operations"] = []
        path = self.work_dir / "state-without-pending.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        try:
            self._cli(stack, ["stack", "import", "--file", str(path), "--stack", self.name])
        finally:
            path.unlink(missing_ok=True)
        return [f"{op.get('type', '?')} {(op.get('resource') or {}).get('urn', '?')}" for op in pending]

    def placement(self) -> tuple[str | None, str | None]:
        """(cloud, region) from the stack's own settings file in its work folder, for a cluster
        whose record is lost; (None, None) when the file is missing or unreadable."""
        path = self.work_dir / f"Pulumi.{self.name}.yaml"
        try:
            config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            return None, None
        provider = config.get("cloudtrain:provider")
        region = next((config[k] for k in ("aws:region", "gcp:region", "azure-native:location") if isinstance(config.get(k), str)), None)
        return (provider if isinstance(provider, str) else None), region

    def outputs(self) -> dict[str, Any]:
        try:
            stack = self._open(create=False)
            return {k: v.value for k, v in stack.outputs().items()}
        except auto.StackNotFoundError:
            return {}
        except auto.CommandError as e:
            raise ProvisionError(f"cannot read outputs of stack {self.name!r}: {_reason(e)}") from e
