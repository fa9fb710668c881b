"""Operators that pom-deploy exports as single ONNX nodes (and their oracles)."""
