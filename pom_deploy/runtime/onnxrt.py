"""onnxruntime backend (kind ``onnxruntime``): ``.onnx`` files, and any file no other backend claims."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..dtypes import name_of
from ..errors import ModelLoadError, PomDeployWarning, RuntimeInputError, first_line
from ..onnx_graph import read_spec
from ..ops.native_libraries import BUILD_OPS_COMMAND, search_off
from ..ops.ort_ops import ORT_OPS_ENV, ORT_OPS_OFF, register_ort_ops
from ..spec import TensorSpec
from .base import Backend, register_backend
from .providers import select_providers, with_plugin_library

_ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in ("Fail", "InvalidArgument", "RuntimeException"))


@contextlib.contextmanager
def _runtime_errors():
    """Inputs that pass the spec checks can still fail inside the graph (e.g. a RoPE position
    past the layer's table): one line, not onnxruntime's traceback."""
    try:
        yield
    except (RuntimeError, *_ORT_ERRORS) as exc:
        raise RuntimeInputError(f"onnxruntime failed: {first_line(exc)}") from None


_slow_path_warned = False


def _warn_slow_path_once(path: Path) -> None:
    """No silent slow path: the first fused graph that runs its nodes' function bodies on the CPU
    provider says so, once per process, with the command that builds the kernel."""
    global _slow_path_warned
    if _slow_path_warned:
        return
    _slow_path_warned = True
    warnings.warn(f"{path.name}: PolyAggregate nodes run as their function bodies, slower than the CPU kernel "
                  f"(docs/benchmarks.md, section 6): build the kernel with `{BUILD_OPS_COMMAND}` "
                  f"(ort_ops=False, or ${ORT_OPS_ENV}={ORT_OPS_OFF}, accepts the function bodies)", PomDeployWarning, stacklevel=3)


@register_backend
class OnnxRuntimeBackend(Backend):
    kind = "onnxruntime"
    suffixes = (".onnx",)

    def __init__(self, path: str | Path, device: str | None = None, providers: list[str] | None = None, threads: int | None = None,
                 ort_ops: str | Path | bool | None = None):
        """``ort_ops``: the PolyAggregate custom-op library for a fused graph on the CPU provider
        (a path; None: the one ``pom_deploy.ops.ort_ops`` finds, if any, else a warning, once;
        True: that one, and an error if there is none; False: none, so the nodes' function bodies
        run). Only when the CPU provider comes first: with a GPU provider first, the nodes must
        stay with it."""
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file")
        self.path = path
        self.providers = providers or select_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures come back as exceptions (one line); no log lines besides
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.spec = read_spec(path)
        except Exception as exc:
            raise ModelLoadError(f"{path} is not a valid ONNX model for onnxruntime: {first_line(exc)}") from None
        fused = self.spec is not None and self.spec.fused_ops
        self.ort_ops_library = None
        if fused and ort_ops is not False and self.providers[0] == "CPUExecutionProvider":
            self.ort_ops_library = register_ort_ops(options, None if ort_ops in (None, True) else ort_ops)
            if ort_ops is True and self.ort_ops_library is None:
                raise ModelLoadError(f"{path} has fused PolyAggregate nodes and no CPU op library was found "
                                     f"(${ORT_OPS_ENV}, or build it with `{BUILD_OPS_COMMAND}`)")
            if self.ort_ops_library is None and ort_ops is None and not search_off(ORT_OPS_ENV):
                _warn_slow_path_once(path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=with_plugin_library(self.providers, fused))
        except Exception as exc:
            raise ModelLoadError(f"{path} is not a valid ONNX model for onnxruntime: {first_line(exc)}") from None
        kernel = " + PolyAggregate CPU kernel" if self.ort_ops_library is not None else ""
        self.name = f"onnxruntime ({self.session.get_providers()[0]}{kernel})"
        self._state_device = "cpu" if self.session.get_providers()[0] == "CPUExecutionProvider" else "cuda"

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec(i.name, list(i.shape), name_of("ort", i.type)) for i in self.session.get_inputs()]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec(o.name, list(o.shape), name_of("ort", o.type)) for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        with _runtime_errors():
            return dict(zip(names, self.session.run(names, feeds)))

    def run_keep_on_device(self, feeds, keep):
        """``keep`` outputs stay where the provider computes them (device memory with a GPU
        provider) as ``OrtValue``s, fed back at the next call without a copy: I/O binding.
        The same path runs on CPU, which is how it is tested here."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, value)
        for out in self.session.get_outputs():
            binding.bind_output(out.name, self._state_device if out.name in keep else "cpu")
        with _runtime_errors():
            self.session.run_with_iobinding(binding)
        values = dict(zip([o.name for o in self.session.get_outputs()], binding.get_outputs()))
        host = {k: v.numpy() for k, v in values.items() if k not in keep}
        return host, {k: values[k] for k in keep}
