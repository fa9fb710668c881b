"""pom-deploy: export and deploy Polynomial Mixer (PoM) models.

The package's facade: the public API, gathered from the layers (tests/test_architecture.py
lists them, bottom up); no module of the package imports it.
"""

from .version import __version__  # noqa: E402
from .errors import PomDeployError  # noqa: E402
from .exporters import export_onnx  # noqa: E402
from .loading import convert_upstream_layers, load_model, save_checkpoint  # noqa: E402
from .runtime import load  # noqa: E402
from . import tensorrt  # noqa: E402, F401  (registers the TensorRT backend with the runtime)

__all__ = ["PomDeployError", "__version__", "convert_upstream_layers", "export_onnx", "load", "load_model", "save_checkpoint"]
