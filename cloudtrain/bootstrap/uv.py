"""The framework install's installer: `uv pip install` when uv can be had, pip otherwise.

uv installs the framework faster than pip, and far faster from its cache (figures:
bench/install.py).
It does not read pip's configuration, so the node's pip settings (its config files and PIP_*
variables, as the local provider hands this machine's over) are translated into UV_*
variables first: where packages come from must not change with the installer. uv comes from
PATH, from an earlier bootstrap's copy in $CLOUDTRAIN_NODE_ROOT/tools/uv, or from `pip
install uv` there (one try, no retries); when none works, pip installs as before.
CLOUDTRAIN_INSTALLER=pip in the step's environment forces pip (bench/install.py compares).
"""

from __future__ import annotations

import shlex

# Run by the venv's python: `pip config list` (every config file and PIP_* variable, as pip
# itself merges them) to `export UV_...` lines. The PIP_* variable wins over the install
# section, which wins over global, as for pip.
PIP_TO_UV = r'''
import ast, shlex, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
rank = {":env:": 3, "install": 2, "global": 1}
best = {}
for line in out.splitlines():
    key, sep, value = line.partition("=")
    section, _, name = key.rpartition(".")
    if not sep or section not in rank:
        continue
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        continue
    if name not in best or rank[section] > best[name][0]:
        best[name] = (rank[section], str(value))
conf = {name: value for name, (_, value) in best.items()}
env = {"UV_INDEX_STRATEGY": "unsafe-best-match"}  # pip's rule: the best version over every index
if "index-url" in conf:
    env["UV_INDEX_URL"] = conf["index-url"]
if "extra-index-url" in conf:
    env["UV_EXTRA_INDEX_URL"] = " ".join(conf["extra-index-url"].split())
if "find-links" in conf:
    env["UV_FIND_LINKS"] = ",".join(conf["find-links"].split())
if conf.get("no-index", "").lower() in ("1", "true", "yes", "on"):
    env["UV_NO_INDEX"] = "1"
if "constraint" in conf:
    env["UV_CONSTRAINT"] = " ".join(conf["constraint"].split())
if "cert" in conf:
    env["SSL_CERT_FILE"] = conf["cert"]
timeout = conf.get("timeout") or conf.get("default-timeout")
if timeout:
    env["UV_HTTP_TIMEOUT"] = timeout
for k, v in env.items():
    print(f"export {k}={shlex.quote(v)}")
'''

# Defines `install ARGS...` (uv or pip into the job venv) and says which one it is.
_CHOOSE = r'''
uv_bin=""
tools="$CLOUDTRAIN_NODE_ROOT/tools/uv"
if [ "${CLOUDTRAIN_INSTALLER:-uv}" != pip ]; then
  if command -v uv >/dev/null 2>&1; then
    uv_bin=$(command -v uv)
  elif [ -x "$tools/bin/uv" ]; then
    uv_bin="$tools/bin/uv"
  elif "$CLOUDTRAIN_VENV/bin/python" -m pip install --disable-pip-version-check -q --retries 0 --timeout 20 --target "$tools" uv >/dev/null 2>&1 && [ -x "$tools/bin/uv" ]; then
    uv_bin="$tools/bin/uv"
  fi
fi
if [ -n "$uv_bin" ]; then
  eval "$("$CLOUDTRAIN_VENV/bin/python" -c @PIP_TO_UV@)"
  echo "installer: uv ($("$uv_bin" --version))"
  install() { "$uv_bin" pip install --python "$CLOUDTRAIN_VENV/bin/python" -q "$@"; }
else
  if [ "${CLOUDTRAIN_INSTALLER:-uv}" = pip ]; then echo "installer: pip (CLOUDTRAIN_INSTALLER=pip)"; else echo "installer: pip (uv could not be had)"; fi
  install() { "$CLOUDTRAIN_VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }
fi
'''


def chooser() -> str:
    """Bash defining `install` (uv when it can be had, else pip) with pip's settings in force."""
    return _CHOOSE.replace("@PIP_TO_UV@", shlex.quote(PIP_TO_UV))
