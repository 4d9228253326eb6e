"""cloudtrain: rent a GPU machine, train on it, bring the model home, give the machine back."""

__version__ = "0.1.0"

# The Python API (api.py), loaded on first use: `import cloudtrain` and the CLI's start stay light.
_API = ("up", "down", "cluster", "runs", "spec", "Cluster", "Job")
__all__ = list(_API)


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 module attribute hook
    if name in _API:
        from cloudtrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'cloudtrain' has no attribute {name!r}")
