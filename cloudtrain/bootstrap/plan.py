"""From facts and a request to an ordered list of steps. Pure: no I/O, so it is easy to test."""

from __future__ import annotations

import shlex
from typing import Any

from cloudtrain.bootstrap import gpu, uv
from cloudtrain.bootstrap.gpu import Request
from cloudtrain.bootstrap.steps import Step, script


def plan(facts: dict[str, Any], request: Request) -> list[Step]:
    install = gpu.framework_install(facts, request)
    return [
        _python_venv_package(facts),
        *gpu.gpu_steps(facts, request),
        _venv(install),
        _framework(install),
        gpu.verify_step(facts, request),
    ]


def _python_venv_package(facts: dict[str, Any]) -> Step:
    if facts.get("python_venv"):
        return Step("python-venv", "Python's venv module", skip_reason="not needed: python3 has venv")
    return Step(
        "python-venv",
        "install python3-venv (Debian/Ubuntu ship venv separately)",
        script=script("python-venv"),
        env={"CLOUDTRAIN_STEP": "python-venv"},
        sudo=True,
    )


# --system-site-packages reaches the base interpreter's packages only. Where python3 is itself
# a venv (a deep-learning image's /opt/pytorch, say), its packages are named in a .pth file.
_SEE_PARENT_VENV = (
    'import site, sys\n'
    'if sys.prefix != sys.base_prefix:\n'
    '    print("\\n".join(site.getsitepackages()))\n'
)
_PURELIB = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'


def _venv(install: gpu.Install) -> Step:
    flag = " --system-site-packages" if install.system_site_packages else ""
    script = (
        'if [ ! -x "$CLOUDTRAIN_VENV/bin/python" ]; then\n'
        f'  python3 -m venv{flag} "$CLOUDTRAIN_VENV"\n'
        "fi\n"
    )
    if install.system_site_packages:
        script += (
            f'python3 -c {shlex.quote(_SEE_PARENT_VENV)} > "$("$CLOUDTRAIN_VENV/bin/python" -c {shlex.quote(_PURELIB)})/cloudtrain-preinstalled.pth"\n'
        )
    script += '"$CLOUDTRAIN_VENV/bin/python" -m pip --version\n'
    return Step(
        "venv",
        f"a Python virtual environment for jobs{' (reusing the preinstalled framework)' if flag else ''}",
        script=script,
    )


_INDEX_REACHABLE = (
    'import sys, urllib.request\n'
    'try:\n'
    '    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/", timeout=15).close()\n'
    'except Exception:\n'
    '    sys.exit(1)\n'
)


def _framework(install: gpu.Install) -> Step:
    if not install.requirements:
        return Step("framework", "deep-learning framework", skip_reason=f"not needed: {install.summary or 'no framework'}")
    reqs = " ".join(shlex.quote(r) for r in install.requirements)
    script = uv.chooser()  # defines `install`: uv pip install when uv can be had, else pip
    if install.index_url:
        idx = shlex.quote(install.index_url)
        # pip retries an unreachable index with backoff for every package, for minutes; look once,
        # and on a node that cannot reach it use pip's own configured sources (a mirror, local wheels).
        # What that gives is checked after the install (installed.py): never silently another build.
        script += (
            f'if "$CLOUDTRAIN_VENV/bin/python" -c {shlex.quote(_INDEX_REACHABLE)} {idx}; then\n'
            f"  install --index-url {idx} {reqs}\n"
            "else\n"
            f'  echo "warning: {install.index_url} is unreachable; installing from pip\'s configured indexes" >&2\n'
            f"  install {reqs}\n"
            "fi\n"
        )
    else:
        script += f"install {reqs}\n"
    return Step("framework", f"install {install.summary or ' '.join(install.requirements)}", script=script)
