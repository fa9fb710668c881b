"""pom-deploy: export and deploy Polynomial Mixer (PoM) models.

The package's facade: the public API, gathered from the layers (tests/test_architecture.py
lists them, bottom up); no module of the package imports it.
"""

from .version import __version__
from .errors import PomDeployError
from .exporters import export_onnx
from .loading import convert_upstream_layers, load_model, save_checkpoint
from .runtime import load
from . import tensorrt  # noqa: F401 - imported to register the TensorRT backend with the runtime

__all__ = ["PomDeployError", "__version__", "convert_upstream_layers", "export_onnx", "load", "load_model", "save_checkpoint"]
