#!/usr/bin/env bash
# GPU check of the PolyAggregate kernels and, where TensorRT is installed, of the plugin.
#
#   scripts/gpu_check.sh [--no-compile] [--build-only] [--arch SM] [--no-cmake] [--variants A,B]
#
#   --no-compile  skip the torch.compile baseline (its compilation is the slow part)
#   --build-only  stop after step 1; with --arch it needs neither a GPU nor nvidia-smi
#   --arch SM     compute capability to build for, e.g. 90 (default: this GPU's, from nvidia-smi)
#   --no-cmake    build with nvcc and g++ directly even when cmake is present
#   --variants    build and check only these tuning variants (default: all; "none" for none)
#
# 1. Builds plugins/ with CMake for this GPU's architecture only (CI compiles all of them),
#    plus the CPU emulation library.
# 2. Checks the kernels on the GPU against the float64 oracle and the CPU emulation, and
#    their determinism, for every mode, variant and dtype on odd shapes, RoPE 1d/2d and
#    block-causal frames included, and fp16/bf16 x with float32 coeff, mask, cos and sin.
# 3. Benchmarks them at B=4, N=16384, C=2048 fp16 (plain ops, v2 with RoPE 2d, block-causal
#    frames of 256 tokens): bandwidth vs the measured device copy
#    bandwidth, time vs PyTorch eager and torch.compile (--no-compile skips the latter); then
#    checks and benchmarks, side by side, builds with other tuning constants.
# 4. With TensorRT headers (TENSORRT_INCLUDE_DIR or TensorRT_ROOT; no TensorRT libraries needed):
#    the plugin's host-side test, whose enqueue runs on the GPU. With the Python tensorrt
#    package as well: ONNX -> TensorRT engine -> enqueue, loading the plugin both ways
#    (load_library, and the autoregister library by dlopen), fp16/bf16 nodes with float32 side
#    inputs, and (10.x) the types a weakly typed --fp16/--bf16 build gives the plugin's inputs;
#    then pom-deploy's own builds: a
#    --no-plugin engine of two PoM layers of different degrees and a version-compatible engine.
# Needs nvcc, a C++ compiler, python with torch, numpy, ml_dtypes (and onnx for 4); uses
# cmake when present, else builds with nvcc and g++ directly.
# Exits non-zero when a check fails. See docs/gpu_check.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${POM_GPU_CHECK_BUILD:-${TMPDIR:-/tmp}/pom_gpu_check_build}"
PYTHON="${PYTHON:-python3}"
COMPILE_FLAG=()
BUILD_ONLY=0
ARCH=""
USE_CMAKE=1
ONLY_VARIANTS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-compile) COMPILE_FLAG=(--no-compile) ;;
        --build-only) BUILD_ONLY=1 ;;
        --arch)
            ARCH="${2:-}"
            [[ "${ARCH}" =~ ^[0-9]+[a-z]?$ ]] || { echo "gpu_check.sh: --arch needs a compute capability such as 90" >&2; exit 2; }
            shift ;;
        --no-cmake) USE_CMAKE=0 ;;
        --variants)
            ONLY_VARIANTS="${2:-}"
            [[ -n "${ONLY_VARIANTS}" ]] || { echo "gpu_check.sh: --variants needs a comma-separated list, or none" >&2; exit 2; }
            shift ;;
        *) echo "gpu_check.sh: unknown option $1 (see the usage at the top of this script)" >&2; exit 2 ;;
    esac
    shift
done
if ! command -v cmake > /dev/null; then
    USE_CMAKE=0
fi

step() { printf '\n== %s\n' "$*"; }

step "GPU and toolchain"
if [[ -z "${ARCH}" || "${BUILD_ONLY}" == 0 ]]; then
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
fi
nvcc --version | tail -n 2
if [[ -z "${ARCH}" ]]; then
    ARCH="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d '. ')"
fi

WITH_TRT=OFF
if [[ -n "${TENSORRT_INCLUDE_DIR:-}${TensorRT_ROOT:-}" ]]; then
    WITH_TRT=ON
fi

step "build (sm_${ARCH})"
start=${SECONDS}
mkdir -p "${BUILD}"
if [[ "${USE_CMAKE}" == 1 ]]; then
    cmake -S "${ROOT}/plugins" -B "${BUILD}" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CUDA_ARCHITECTURES="${ARCH}-real" -DPOM_WITH_TENSORRT="${WITH_TRT}" > "${BUILD}/configure.log" 2>&1 \
        || { cat "${BUILD}/configure.log"; exit 1; }
    grep -E "TensorRT|architectures" "${BUILD}/configure.log" || true
    cmake --build "${BUILD}" -j "$(nproc)"
    grep -q "TensorRT headers:" "${BUILD}/configure.log" || WITH_TRT=OFF
else
    # Same library without CMake: the kernels (+ the plugin when TENSORRT_INCLUDE_DIR is set).
    echo "building with nvcc and g++ directly (no cmake, or --no-cmake)"
    SOURCES=("${ROOT}/plugins/poly_aggregate/polyAggregateKernel.cu")
    INCLUDES=()
    if [[ -n "${TENSORRT_INCLUDE_DIR:-}" ]]; then
        SOURCES+=("${ROOT}/plugins/poly_aggregate/polyAggregatePlugin.cpp")
        INCLUDES=(-isystem "${TENSORRT_INCLUDE_DIR}")
    else
        WITH_TRT=OFF
    fi
    nvcc -std=c++17 -O3 -shared -Xcompiler -fPIC,-fvisibility=hidden -arch="sm_${ARCH}" \
        ${INCLUDES[@]+"${INCLUDES[@]}"} "${SOURCES[@]}" -ldl -o "${BUILD}/libpom_deploy_plugins.so"
    if [[ "${WITH_TRT}" == ON ]]; then
        nvcc -std=c++17 -O2 -shared -Xcompiler -fPIC,-fvisibility=hidden -I "${ROOT}/plugins/poly_aggregate" \
            "${INCLUDES[@]}" "${ROOT}/plugins/poly_aggregate/polyAggregateAutoRegister.cpp" -L"${BUILD}" \
            -lpom_deploy_plugins -ldl -Xlinker -rpath,'$ORIGIN' -o "${BUILD}/libpom_deploy_plugins_autoregister.so"
        nvcc -std=c++17 -O2 -I "${ROOT}/plugins/poly_aggregate" "${INCLUDES[@]}" \
            "${ROOT}/plugins/tests/polyAggregatePluginHostTest.cpp" -L"${BUILD}" -lpom_deploy_plugins \
            -Xlinker -rpath,"${BUILD}" -o "${BUILD}/poly_aggregate_plugin_host_test"
    fi
    g++ -std=c++17 -O2 -shared -fPIC -fvisibility=hidden -I "${ROOT}/plugins/poly_aggregate" \
        "${ROOT}/plugins/tests/polyAggregateCpuEmulation.cpp" -o "${BUILD}/libpom_poly_aggregate_cpu_emulation.so"
fi
echo "built in $((SECONDS - start)) s"

step "build tuning variants (compile-time constants of polyAggregateCommon.h)"
start=${SECONDS}
VARIANT_ARGS=()
PIDS=()
# Builds run in the background, at most one per CPU (nvcc also compiles with --threads).
wait_for_a_slot() {
    while (( $(jobs -rp | wc -l) >= $(nproc) )); do
        wait -n
    done
}
while read -r name flags; do
    if [[ -n "${ONLY_VARIANTS}" && ",${ONLY_VARIANTS}," != *",${name},"* ]]; then
        continue
    fi
    read -r -a defines <<< "${flags}"
    dir="${BUILD}/variant-${name}"
    mkdir -p "${dir}"
    wait_for_a_slot
    nvcc -std=c++17 -O3 -shared -Xcompiler -fPIC,-fvisibility=hidden -arch="sm_${ARCH}" ${defines[@]+"${defines[@]}"} \
        "${ROOT}/plugins/poly_aggregate/polyAggregateKernel.cu" -o "${dir}/libpom_deploy_plugins.so" &
    PIDS+=($!)
    wait_for_a_slot
    g++ -std=c++17 -O2 -shared -fPIC -fvisibility=hidden ${defines[@]+"${defines[@]}"} -I "${ROOT}/plugins/poly_aggregate" \
        "${ROOT}/plugins/tests/polyAggregateCpuEmulation.cpp" -o "${dir}/libpom_poly_aggregate_cpu_emulation.so" &
    PIDS+=($!)
    VARIANT_ARGS+=(--variant "${name}=${dir}/libpom_deploy_plugins.so:${dir}/libpom_poly_aggregate_cpu_emulation.so")
    echo "${name}: ${flags}"
done < <("${PYTHON}" "${ROOT}/scripts/gpu_check/check_poly_aggregate.py" --list-variants)
for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    wait "${pid}"
done
echo "built in $((SECONDS - start)) s"
if [[ "${BUILD_ONLY}" == 1 ]]; then
    echo
    echo "gpu_check: build only, done (${BUILD})"
    exit 0
fi

step "kernels on the GPU: correctness, determinism, benchmark, tuning variants"
"${PYTHON}" "${ROOT}/scripts/gpu_check/check_poly_aggregate.py" \
    --kernels "${BUILD}/libpom_deploy_plugins.so" --cpu "${BUILD}/libpom_poly_aggregate_cpu_emulation.so" \
    ${COMPILE_FLAG[@]+"${COMPILE_FLAG[@]}"} ${VARIANT_ARGS[@]+"${VARIANT_ARGS[@]}"}

if [[ "${WITH_TRT}" == ON ]]; then
    # Build-time methods on the host, then enqueue on this GPU against a direct C ABI launch.
    step "TensorRT plugin with headers only: build-time methods and enqueue on the GPU"
    "${BUILD}/poly_aggregate_plugin_host_test"
fi

step "TensorRT plugin: parse, build, enqueue; engines without the plugin and version-compatible"
if [[ "${WITH_TRT}" == ON ]] && "${PYTHON}" -c "import tensorrt" 2> /dev/null; then
    # registry: IPluginRegistry.load_library (getCreators); dlopen: the autoregister library.
    for load in registry dlopen; do
        "${PYTHON}" "${ROOT}/scripts/gpu_check/check_trt_plugin.py" --plugin "${BUILD}/libpom_deploy_plugins.so" --load "${load}"
    done
    # --no-plugin with two PoM layers of different degrees; a version-compatible engine.
    "${PYTHON}" "${ROOT}/scripts/gpu_check/check_trt_engines.py" --plugin "${BUILD}/libpom_deploy_plugins.so"
else
    echo "skipped: needs TensorRT headers (TENSORRT_INCLUDE_DIR or TensorRT_ROOT) and the tensorrt Python package"
fi
echo
echo "gpu_check: all checks passed"
