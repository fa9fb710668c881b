"""TensorRT backend (kind ``tensorrt``, files ``.engine``/``.plan``): runs an engine built by
``pom-deploy build-engine``.

TensorRT and Polygraphy are imported when a backend is constructed, never at import time, so
this module imports everywhere; constructing it without TensorRT raises
``BackendUnavailableError`` saying what to install.

Inference goes through Polygraphy's ``TrtRunner``. ``run_keep_on_device`` returns the kept
outputs (the streaming state) as device buffers that are fed straight back at the next step:
torch CUDA tensors when torch has CUDA, Polygraphy ``DeviceArray``s otherwise.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import by_name, name_of
from ..errors import BackendUnavailableError, ModelLoadError, RuntimeInputError
from ..runtime.base import Backend, register_backend
from ..spec import TensorSpec
from .environment import current_environment, require_tensorrt
from .plugins import PluginError, find_plugin_library, load_plugin_library
from .profiles import profiles_from_json, select_profile
from .sidecar import check_compatible, read_sidecar, sidecar_path, spec_from_sidecar

DEVICES = ("cuda", "tensorrt")  # an engine runs on the GPU it was built for, nowhere else

@register_backend
class TensorRTBackend(Backend):
    kind = "tensorrt"
    suffixes = (".engine", ".plan")

    def __init__(self, path: str | Path, device: str | None = None, plugin: str | Path | None = None):
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file")
        if device is not None and device.lower() not in DEVICES:
            raise BackendUnavailableError(f"device {device!r}: {path} is a TensorRT engine, which runs on its GPU only "
                                          f"({' or '.join(DEVICES)}); open the ONNX file it was built from for {device}")
        trt = require_tensorrt()
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.exception import PolygraphyException
        from polygraphy.logger import G_LOGGER

        self.path = path
        self.sidecar = read_sidecar(path)
        environment = current_environment()
        if self.sidecar is not None:
            check_compatible(path, self.sidecar, environment)
        self.spec = spec_from_sidecar(self.sidecar)
        self.profiles = profiles_from_json(self.sidecar["profiles"]) if self.sidecar else []
        self._load_plugin(plugin, trt)
        G_LOGGER.module_severity = G_LOGGER.ERROR
        try:
            engine = EngineFromBytes(path.read_bytes())()
        except PolygraphyException:
            hint = (f"it has no sidecar ({sidecar_path(path).name}) to check it against this machine; was it built by another "
                    "TensorRT version or for another GPU?") if self.sidecar is None else "is the file damaged, or a plugin missing?"
            raise ModelLoadError(f"TensorRT {environment['tensorrt_version']} cannot load {path}: {hint} "
                                 f"Rebuild it here with `pom-deploy build-engine`") from None
        self.runner = TrtRunner(engine)
        self.runner.activate()
        self._engine_inputs = list(self.runner.get_input_metadata().keys())  # TensorRT may drop unused ones
        self._profile = 0
        self._finalizer = weakref.finalize(self, self.runner.deactivate)
        self.name = f"tensorrt {environment['tensorrt_version']} ({environment['gpu_name']})"

    def _load_plugin(self, plugin, trt) -> None:
        used = (self.sidecar or {}).get("plugin") or {}
        if plugin is None and not used.get("library"):
            return
        # The sidecar's recorded path is not searched: a data file must not choose the code loaded.
        library = find_plugin_library(plugin)
        if library is None:
            raise PluginError(f"{self.path} uses the pom plugin ({Path(used['library']).name}) and it is not found here; "
                              "pass plugin=... (--plugin) or set POM_DEPLOY_PLUGIN")
        load_plugin_library(library, trt)

    def close(self) -> None:
        self._finalizer()

    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self.spec.inputs) if self.spec is not None else self._io_specs(input_mode=True)

    @property
    def output_specs(self) -> list[TensorSpec]:
        return list(self.spec.outputs) if self.spec is not None else self._io_specs(input_mode=False)

    def _io_specs(self, input_mode: bool) -> list[TensorSpec]:
        import tensorrt as trt

        engine = self.runner.engine
        mode = trt.TensorIOMode.INPUT if input_mode else trt.TensorIOMode.OUTPUT
        specs = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == mode:
                shape = [d if d >= 0 else f"{name}_dim{axis}" for axis, d in enumerate(engine.get_tensor_shape(name))]
                dtype = name_of("tensorrt", engine.get_tensor_dtype(name).name)
                specs.append(TensorSpec(name, shape, dtype))
        return specs

    def _infer(self, feeds: dict[str, Any], copy_outputs_to_host: bool):
        names = self._engine_inputs
        missing = [n for n in names if n not in feeds]
        if missing:
            raise RuntimeInputError(f"missing input(s): {', '.join(missing)}")
        if self.profiles:
            shapes = {n: tuple(feeds[n].shape) for n in names}
            index = select_profile(self.profiles, shapes)
            if index < 0:
                ranges = "; ".join(", ".join(f"{n}: {r}" for n, r in p.items()) for p in self.profiles)
                raise RuntimeInputError(f"input shapes {shapes} are outside every optimization profile of {self.path} "
                                        f"({ranges}); rebuild it with --profile")
            if index != self._profile:
                self.runner.set_profile(index)
                self._profile = index
        from polygraphy.exception import PolygraphyException

        try:
            return self.runner.infer({n: feeds[n] for n in names}, copy_outputs_to_host=copy_outputs_to_host)
        except PolygraphyException as exc:
            lines = str(exc).strip().splitlines()
            raise RuntimeInputError(f"TensorRT rejected the inputs: {lines[-1] if lines else exc}") from None

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: _to_host(v) for k, v in self._infer(feeds, copy_outputs_to_host=True).items()}

    def run_keep_on_device(self, feeds, keep):
        """The ``keep`` outputs stay on the GPU as Polygraphy ``DeviceArray``s (copied out of
        the runner's reused output buffers); fed back, they go to TensorRT without a copy, and
        ``.numpy()`` brings one to the host."""
        outputs = self._infer(feeds, copy_outputs_to_host=False)
        kept = {k: _device_copy(outputs[k]) for k in keep}
        return {k: _to_host(v) for k, v in outputs.items() if k not in keep}, kept


def _to_host(value) -> np.ndarray:
    """A host NumPy array that owns its memory (the runner reuses its buffers)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16: move the bits
            import torch

            return value.view(torch.int16).cpu().numpy().view(by_name("bfloat16").numpy())
        return value.cpu().numpy().copy()
    return value.numpy()  # polygraphy DeviceView: synchronous device-to-host copy


def _device_copy(value):
    """A new device buffer holding ``value`` (a DeviceView, or a torch CUDA tensor when the
    caller fed torch tensors)."""
    if hasattr(value, "clone"):
        copy = value.clone()
        import torch

        torch.cuda.current_stream().synchronize()  # TensorRT reads it on another stream
        return copy
    from polygraphy import cuda

    array = cuda.DeviceArray(shape=tuple(value.shape), dtype=value._dtype)
    cuda.wrapper().memcpy(dst=array.ptr, src=value.ptr, nbytes=value.nbytes, kind=cuda.MemcpyKind.DeviceToDevice)
    weakref.finalize(array, cuda.wrapper().free, array.ptr)  # DeviceArray frees only when used as a context
    return array
