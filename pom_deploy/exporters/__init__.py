"""Exporters: PyTorch PoM models to ONNX (full and step graphs), along Optimum's lines: export
configs registered per architecture (``config``, ``model_configs``), graph builders (``graphs``),
the fused op's function bodies (``function_bodies``), saving (``onnx_file``), validation apart
(``verify``), and the orchestration (``onnx_export``)."""

from .config import DimSpec, ExportConfig, InputSpec, register_export_config
from .onnx_export import ExportResult, export_onnx

__all__ = ["DimSpec", "ExportConfig", "ExportResult", "InputSpec", "export_onnx", "register_export_config"]
