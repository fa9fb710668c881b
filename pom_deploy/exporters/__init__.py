"""Exporters: PyTorch PoM models to ONNX (full and step graphs)."""

from .config import DimSpec, ExportConfig, InputSpec
from .onnx_export import ExportResult, export_onnx

__all__ = ["DimSpec", "ExportConfig", "ExportResult", "InputSpec", "export_onnx"]
