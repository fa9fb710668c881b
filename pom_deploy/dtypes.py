"""The one registry of the data types pom-deploy handles, with every library's spelling of each.

Modelled on Polygraphy's ``datatype`` module: a type is named once, by its NumPy name
(``float32``: the spelling of ``GraphSpec``/``TensorSpec``), and every layer converts through
here -- precision flags (``fp32``), torch dtypes, ONNX element types, onnxruntime's type strings,
TensorRT's ``DataType`` members, the PolyAggregate C ABI's ``PomDType`` codes -- instead of
keeping its own table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DataType:
    name: str  # NumPy's name, the spelling of the pom-deploy metadata
    onnx: int  # onnx.TensorProto element type
    onnx_name: str  # ONNX's type name, as onnxruntime writes it in "tensor(...)"
    tensorrt: str | None = None  # tensorrt.DataType member name
    precision: str | None = None  # the precision of float types: --precision, --fp16, metadata, sidecars
    abi: int | None = None  # PomDType of the PolyAggregate C ABI (plugins/poly_aggregate/polyAggregate.h)
    triton: str | None = None  # Triton's model-config DataType name (config.pbtxt)

    @property
    def ort(self) -> str:
        return f"tensor({self.onnx_name})"

    def numpy(self) -> np.dtype:
        """The NumPy dtype (bfloat16 through ml_dtypes, imported only then)."""
        if self.name == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(self.name)

    def torch(self) -> Any:
        import torch

        return getattr(torch, self.name)


DATATYPES = (
    DataType("float32", 1, "float", "FLOAT", "fp32", 0, "TYPE_FP32"),
    DataType("float16", 10, "float16", "HALF", "fp16", 1, "TYPE_FP16"),
    DataType("bfloat16", 16, "bfloat16", "BF16", "bf16", 2, "TYPE_BF16"),
    DataType("float64", 11, "double", triton="TYPE_FP64"),
    DataType("int64", 7, "int64", "INT64", triton="TYPE_INT64"),
    DataType("int32", 6, "int32", "INT32", triton="TYPE_INT32"),
    DataType("int8", 3, "int8", "INT8", triton="TYPE_INT8"),
    DataType("uint8", 2, "uint8", "UINT8", triton="TYPE_UINT8"),
    DataType("bool", 9, "bool", "BOOL", triton="TYPE_BOOL"),
)
FLOAT_TYPES = tuple(t for t in DATATYPES if t.precision is not None)  # what models are exported and built in
PRECISIONS = tuple(t.precision for t in FLOAT_TYPES)  # ("fp32", "fp16", "bf16")

_BY = {
    "name": {t.name: t for t in DATATYPES},
    "precision": {t.precision: t for t in FLOAT_TYPES},
    "onnx": {t.onnx: t for t in DATATYPES},
    "ort": {t.ort: t for t in DATATYPES},
    "tensorrt": {t.tensorrt: t for t in DATATYPES if t.tensorrt},
    "triton": {t.triton: t for t in DATATYPES if t.triton},
}


def lookup(spelling: str, value: Any) -> DataType | None:
    """The type that ``value`` names in one spelling ("name", "precision", "onnx", "ort",
    "tensorrt", "triton"), or None."""
    return _BY[spelling].get(value)


def by_name(name: str) -> DataType:
    return _BY["name"][name]


def by_precision(precision: str) -> DataType:
    return _BY["precision"][precision]


def name_of(spelling: str, value: Any) -> str:
    """The NumPy name of a type in another spelling; an unknown one is kept, lower-cased, so
    that a message can still show it."""
    found = lookup(spelling, value)
    return found.name if found is not None else str(value).lower()


def to_numpy(tensor: Any, name: str) -> np.ndarray:
    """A torch tensor as a host array of the named type (bfloat16 rounded from float32)."""
    import torch

    if name == "bfloat16":
        return tensor.detach().to(torch.float32).cpu().numpy().astype(by_name(name).numpy())
    return tensor.detach().to(by_name(name).torch()).cpu().numpy()


def cast(array: np.ndarray, name: str) -> np.ndarray:
    """``array.astype`` the named type (bfloat16 too)."""
    return np.asarray(array).astype(by_name(name).numpy())
