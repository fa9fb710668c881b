#!/usr/bin/env bash
# TensorRT check for machines with TensorRT and an NVIDIA GPU (Jetson Orin/Thor, data-center).
# Builds engines for the zoo models (fp32 and fp16, with and without the pom plugin), compares
# each with onnxruntime, streams the video model's step graph, and prints a table.
#
#   scripts/check_tensorrt.sh [--dir trt-check] [--models video_pom,dit_pom] [--plugin libpom_deploy_plugins.so]
#
# Exit status: 0 all passed, 1 a check failed, 2 TensorRT/GPU missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /etc/nv_tegra_release ]; then
    echo "error: no NVIDIA GPU found (nvidia-smi missing, not a Jetson); this check needs a GPU with TensorRT" >&2
    exit 2
fi
if ! "$PYTHON" -c "import tensorrt, polygraphy" >/dev/null 2>&1; then
    echo "error: TensorRT is not installed for $PYTHON: pip install 'pom-deploy[trt]' (on Jetson: JetPack's python3-libnvinfer)" >&2
    exit 2
fi
exec "$PYTHON" scripts/check_tensorrt.py "$@"
