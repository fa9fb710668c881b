"""pom-deploy: export and deploy Polynomial Mixer (PoM) models."""

__version__ = "0.1.0"

from .errors import PomDeployError  # noqa: E402
from .exporters import export_onnx  # noqa: E402
from .loading import convert_upstream_layers, load_model, save_checkpoint  # noqa: E402
from .runtime import load  # noqa: E402
from . import tensorrt  # noqa: E402, F401  (registers the TensorRT backend with the runtime)

__all__ = ["PomDeployError", "__version__", "convert_upstream_layers", "export_onnx", "load", "load_model", "save_checkpoint"]
