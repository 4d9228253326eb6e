"""Entry for `pulumi up` on this repository (Pulumi.yaml's `main`): runs cloudtrain's program."""

import sys
from pathlib import Path

import pulumi

# The language host runs this file by path; make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudtrain.errors import CloudtrainError  # noqa: E402
from cloudtrain.provisioner import program  # noqa: E402

try:
    program.run()
except CloudtrainError as e:
    # One line instead of a traceback, like the cloudtrain CLI.
    raise pulumi.RunError(e.line()) from e
