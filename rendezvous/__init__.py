"""rendezvous: a model-deployment router for streaming machine learning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rendezvous")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0.0.0"
