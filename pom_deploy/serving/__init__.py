"""Serving exported PoM graphs with Triton Inference Server: repositories, the python-backend model,
and the bundled server for local runs (docs/serving.md)."""

from ..errors import PomDeployError


class ServingError(PomDeployError):
    """A Triton repository cannot be written or served (bad option, unservable model, no server)."""
