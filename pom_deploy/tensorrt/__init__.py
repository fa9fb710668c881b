"""Everything TensorRT, in one wing: build engines (``build``, ``profiles``, ``plugins``,
``sidecar``, ``environment``), run them (``backend``, registered with the runtime as kind
``tensorrt``), compare them with onnxruntime (``compare``), and the ``pom-deploy`` commands
(``cli``).

Importing this package never imports TensorRT; the functions that need it raise
``BackendUnavailableError`` (one line: what to install) when it is missing.
"""

from .backend import TensorRTBackend
from .build import BuildOptions, BuildPlan, BuildResult, EngineBuildError, build_engine, parse_size, plan_build, resolve_typing
from ..comparator import ComparisonError, OutputComparison, compare_outputs
from ..runtime.compare import CompareReport, compare_backends, example_feeds
from .compare import compare
from .environment import INSTALL_HINT, current_environment, require_tensorrt, tensorrt_available
from .plugins import PLUGIN_ENV, PluginError, find_plugin_library
from .profiles import DEFAULT_DIM_RANGES, ProfileError, ShapeRange, derive_profiles, parse_profile_arg, select_profile
from .sidecar import EngineMismatchError, check_compatible, compatibility_problems, read_sidecar, sidecar_path, spec_from_sidecar

__all__ = [
    "DEFAULT_DIM_RANGES", "INSTALL_HINT", "PLUGIN_ENV", "BuildOptions", "BuildPlan", "BuildResult", "CompareReport",
    "ComparisonError", "EngineBuildError", "EngineMismatchError", "OutputComparison", "PluginError", "ProfileError",
    "ShapeRange", "TensorRTBackend", "build_engine", "check_compatible", "compare", "compare_backends", "compare_outputs",
    "compatibility_problems", "current_environment", "derive_profiles", "example_feeds", "find_plugin_library",
    "parse_profile_arg", "parse_size", "plan_build", "read_sidecar", "require_tensorrt",
    "resolve_typing", "select_profile", "sidecar_path", "spec_from_sidecar", "tensorrt_available",
]
