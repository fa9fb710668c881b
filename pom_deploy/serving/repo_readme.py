"""The README.md written beside a generated ``config.pbtxt``: what the model is, how to run it, what to check."""

from __future__ import annotations

from pathlib import Path

from ..version import __version__
from ..spec import GraphSpec
from ..ops.native_build import AUTOREGISTER_LIBRARY
from .triton_config import RepoOptions, model_config_schema, summary

_NGC = "nvcr.io/nvidia/tritonserver:<yy.mm>-py3"


def repository_readme(spec: GraphSpec, config, options: RepoOptions, model_path: Path, sidecar: dict | None,
                      plugin_library: Path | None) -> str:
    facts = summary(config)
    data_type = model_config_schema()[0].DataType.Name
    lines = [
        f"# {options.name}: PoM {spec.kind} graph on Triton's {options.backend} backend",
        "",
        f"Written by `pom-deploy triton-repo` (pom-deploy {__version__}) from `{model_path.name}` "
        f"(weights {spec.model_digest}, {spec.precision}). max_batch_size {facts['max_batch_size']}, batching: "
        f"{facts['batching']}, {facts['instances']} instance(s). The config was parsed with Triton's ModelConfig "
        "schema and checked against the model file's inputs and outputs before it was written.",
        "",
        "| tensor | dims (without the batch dim when max_batch_size > 0) | type |",
        "| --- | --- | --- |",
    ]
    for kind, tensors in (("input", config.input), ("output", config.output)):
        lines += [f"| {kind} `{t.name}` | {list(t.dims)} | {data_type(t.data_type)} |"
                  for t in tensors]
    lines.append("")
    if spec.kind == "step":
        lines += _step_section(config)
    lines += _backend_section(options, sidecar, plugin_library)
    return "\n".join(lines) + "\n"


def _step_section(config) -> list[str]:
    seq = config.sequence_batching
    text = [
        "## Streams",
        "",
        "Each stream is a Triton sequence: send its first chunk with `sequence_start=True`, every chunk with the "
        "same `sequence_id`, the last with `sequence_end=True`. "
        f"A sequence idle for {seq.max_sequence_idle_microseconds / 1e6:g} s is dropped.",
        "",
    ]
    if seq.state:
        text += [
            "A chunk may hold any number of tokens.",
            f"Implicit state (zero at the start of a sequence): {', '.join(f'`{s.input_name}` <- `{s.output_name}`' for s in seq.state)}.",
            "",
        ]
    else:
        params = config.parameters
        text += [f"A chunk holds 1 to {params['max_chunk'].string_value} tokens. The python model keeps each sequence's state "
                 "itself, keyed by the whole sequence id (integer or string), freed at END; it keeps as many as Triton has "
                 f"sequence slots ({params['max_sequences'].string_value} per instance). Send each step's number "
                 "(the request parameter `step`, 0 at the start) to make a retry safe: see pom-deploy's docs/serving.md.", ""]
    return text


def _backend_section(options: RepoOptions, sidecar: dict | None, plugin_library: Path | None) -> list[str]:
    if options.backend == "python":
        return [
            "## Running it",
            "",
            "The python backend's stub runs the Python found first on `PATH`; that environment needs pom-deploy "
            "and numpy<2 (with numpy 2 the tritonserver 2.51 stub returns empty tensors; the model refuses to load there).",
            "",
            "- here: `pom-deploy serve REPO` (the tritonserver of the `serve` extra, 127.0.0.1);",
            f"- in NVIDIA's container: `docker run --gpus all -p8000:8000 -p8001:8001 -v $PWD/REPO:/models {_NGC} "
            "bash -c \"pip install 'pom-deploy[serve]' && tritonserver --model-repository=/models\"`.",
            "",
        ]
    if options.backend == "onnxruntime":
        return ["## Running it", "",
                f"`tritonserver --model-repository=REPO` in NVIDIA's container ({_NGC}), which has the onnxruntime backend.", ""]
    lines = [
        "## TensorRT engine",
        "",
        f"Built with TensorRT {sidecar.get('tensorrt_version', '?')} for {sidecar.get('gpu_name', '?')} "
        f"(compute capability {sidecar.get('compute_capability', '?')}), {sidecar.get('precision', '?')}. An engine runs only on "
        "that GPU model (unless built hardware-compatible) and under that TensorRT version (unless built version-compatible): "
        "pick the Triton container whose release notes list this TensorRT version.",
        "",
    ]
    if plugin_library is not None:
        lines += [
            f"The engine uses the pom plugin (`PolyAggregate`): `plugins/{plugin_library.name}` here, built against the same "
            f"TensorRT, with `{AUTOREGISTER_LIBRARY}`, which registers it when Triton's TensorRT backend loads it "
            "(after TensorRT itself, so not by `LD_PRELOAD`):",
            "",
            "- `tritonserver --model-repository=/models "
            f"--backend-config=tensorrt,plugins=/models/{options.name}/plugins/{AUTOREGISTER_LIBRARY}`",
            "",
        ]
    return lines
