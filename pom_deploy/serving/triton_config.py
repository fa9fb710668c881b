"""Triton ``config.pbtxt`` for an exported PoM graph: built from its spec, checked against Triton's schema
(the ``ModelConfig`` protobuf that ``tritonclient`` ships) and against the model file's own inputs/outputs.

Step graphs get the sequence batcher. On the onnxruntime and TensorRT backends every ``past.i.*`` /
``present.i.*`` pair becomes an implicit state (zero initial value) that Triton carries between the
requests of a sequence; the python backend has no implicit state, so its model keeps each sequence's
state itself (``triton_model.py``) and the config gives it the START/END control inputs. It declares no
CORRID control: the model reads the whole id from the request (a UINT64 control would truncate string
ids to 8 bytes, and Triton 2.51 rejects every request to a TYPE_STRING one, measured), so integer and
string sequence ids both work.
Full graphs get the dynamic batcher, with the batch range of the export's profiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..dtypes import DATATYPES
from ..spec import GraphSpec, TensorSpec
from . import ServingError

BACKENDS = ("onnxruntime", "tensorrt", "python")
STRATEGIES = ("oldest", "direct")
MODEL_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan"}  # python: the file keeps its suffix
CONTROL_INPUTS = {"START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END"}
TRITON_DTYPES = {t.name: t.triton for t in DATATYPES if t.triton}  # metadata spelling -> config.pbtxt's
NUMPY_LESS_DTYPES = {"bfloat16"}  # the python backend hands tensors over as numpy arrays
DEFAULT_MAX_BATCH = 8
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class RepoOptions:
    """What ``pom-deploy triton-repo`` lets a user choose (defaults in the CLI help)."""

    backend: str = "python"
    name: str = "pom"
    instances: int = 1
    max_batch: int | None = None  # None: min(8, the export's max batch); 0: no batching
    device: str | None = None  # "cpu" or "gpu"; None: gpu for onnxruntime/tensorrt, cpu for python
    strategy: str = "oldest"
    idle_timeout_s: float = 10.0
    max_sequences: int = 64  # oldest: candidate sequences; python: states kept at most
    queue_delay_us: int = 500
    threads: int = 1  # python backend: onnxruntime intra-op threads per instance
    max_chunk: int | None = None  # python step graphs: most tokens per request; None: the export profile's largest


def model_config_schema():
    """Triton's ModelConfig protobuf module (as tritonclient ships it) and protobuf's text format."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ServingError("writing Triton repositories needs tritonclient[grpc]: pip install 'pom-deploy[serve]'") from None
    return model_config_pb2, text_format


def check_options(options: RepoOptions, spec: GraphSpec) -> None:
    """Reject options Triton could not serve, one line each, before anything is built."""
    if options.backend not in BACKENDS:
        raise ServingError(f"--backend must be one of {', '.join(BACKENDS)}, got {options.backend!r}")
    if not _NAME.match(options.name):
        raise ServingError(f"--name {options.name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    if options.instances < 1:
        raise ServingError(f"--instances must be >= 1, got {options.instances}")
    if options.max_batch is not None and options.max_batch < 0:
        raise ServingError(f"--max-batch must be >= 0, got {options.max_batch}")
    if options.strategy not in STRATEGIES:
        raise ServingError(f"--strategy must be oldest or direct, got {options.strategy!r}")
    if options.idle_timeout_s <= 0 or options.max_sequences < 1 or options.threads < 1 or options.queue_delay_us < 0:
        raise ServingError("--idle-timeout, --max-sequences and --threads must be positive, --queue-delay-us >= 0")
    if options.max_chunk is not None and (options.backend != "python" or spec.kind != "step"):
        raise ServingError("--max-chunk applies to step graphs on the python backend (the model checks it; Triton's own "
                           "backends cannot bound a -1 dim, and a TensorRT engine refuses chunks beyond its profile itself)")
    if options.device not in (None, "cpu", "gpu"):
        raise ServingError(f"--device must be cpu or gpu, got {options.device!r}")
    if options.backend == "tensorrt" and options.device == "cpu":
        raise ServingError("TensorRT engines run on GPUs only; --device cpu needs --backend onnxruntime or python")
    if spec.kind == "step" and options.max_batch == 0 and options.strategy == "oldest":
        raise ServingError("the oldest strategy batches sequences: it needs --max-batch >= 1 (or use --strategy direct)")
    if options.backend == "python":
        bad = [t.name for t in spec.inputs + spec.outputs if t.dtype in NUMPY_LESS_DTYPES]
        if bad:
            raise ServingError(f"the python backend passes numpy arrays and numpy has no bfloat16 ({bad[0]}); "
                               "use --backend onnxruntime or tensorrt, or export in fp16/fp32")
    unknown = [t for t in spec.inputs + spec.outputs if t.dtype not in TRITON_DTYPES]
    if unknown:
        raise ServingError(f"{unknown[0].name} is {unknown[0].dtype}, a type Triton has no TYPE_ for")


def max_batch_size(spec: GraphSpec, options: RepoOptions, profile_max_batch: int | None) -> int:
    """Triton's max_batch_size: 0 when the graph's batch dim is fixed, else within the export's range."""
    batchable = all(t.shape and isinstance(t.shape[0], str) for t in spec.inputs + spec.outputs)
    if options.max_batch == 0:
        return 0
    if not batchable:
        if options.max_batch:
            raise ServingError(f"--max-batch {options.max_batch}: the graph's batch dim is fixed, "
                               "so Triton cannot batch it (use --max-batch 0)")
        return 0
    limit = profile_max_batch or max((t.max_shape[0] for t in spec.inputs if t.max_shape), default=None)
    wanted = options.max_batch or min(DEFAULT_MAX_BATCH, limit or DEFAULT_MAX_BATCH)
    if limit is not None and wanted > limit:
        raise ServingError(f"--max-batch {wanted} is above the largest batch the model was exported/built for ({limit})")
    return wanted


def sequence_slots(options: RepoOptions, max_batch: int) -> int:
    """How many sequences Triton's sequence batcher keeps open per model instance: the candidate
    sequences of the oldest strategy, one per batch slot with the direct one. The python model keeps
    this many states, so it never refuses a START that Triton admitted."""
    return options.max_sequences if options.strategy == "oldest" else max(1, max_batch)


def max_chunk(spec: GraphSpec, options: RepoOptions) -> int:
    """The most tokens one request may carry: ``--max-chunk``, within the export profile's largest chunk
    (one huge chunk holds every stream batched behind it; beyond the profile the graph is unverified)."""
    chunk = spec.data_inputs[0]
    profile = chunk.max_shape[1] if chunk.max_shape and len(chunk.max_shape) > 1 else None
    if options.max_chunk is None:
        if profile is None:
            raise ServingError(f"the step graph's {chunk.name} has no export profile; choose the largest chunk with --max-chunk")
        return profile
    if options.max_chunk < 1 or (profile is not None and options.max_chunk > profile):
        raise ServingError(f"--max-chunk must be within 1..{profile} (the export profile's largest chunk), got {options.max_chunk}")
    return options.max_chunk


def triton_dims(shape: list[int | str], batched: bool) -> list[int]:
    """A spec shape as Triton dims: symbolic dims are -1; the batch dim is left out when Triton batches."""
    return [d if isinstance(d, int) else -1 for d in (shape[1:] if batched else shape)]


def build_config(spec: GraphSpec, options: RepoOptions, model_file: str, profile_max_batch: int | None = None):
    """The ``ModelConfig`` message for ``spec`` served by ``options.backend`` (checked by ``check_config``)."""
    pb, _ = model_config_schema()
    check_options(options, spec)
    config = pb.ModelConfig(name=options.name)
    if options.backend == "tensorrt":
        config.platform = "tensorrt_plan"
        config.default_model_filename = MODEL_FILES["tensorrt"]
    else:
        config.backend = options.backend
        if options.backend == "onnxruntime":
            config.default_model_filename = MODEL_FILES["onnxruntime"]
    config.max_batch_size = max_batch_size(spec, options, profile_max_batch)
    batched = config.max_batch_size > 0
    states = spec.state if options.backend != "python" else []  # the python model keeps the state itself
    state_names = spec.state_input_names | set(spec.state_output_names)
    for tensor in spec.inputs:
        if tensor.name not in state_names:
            config.input.add(name=tensor.name, data_type=TRITON_DTYPES[tensor.dtype], dims=triton_dims(tensor.shape, batched))
    for tensor in spec.outputs:
        if tensor.name not in state_names:
            config.output.add(name=tensor.name, data_type=TRITON_DTYPES[tensor.dtype], dims=triton_dims(tensor.shape, batched))
    gpu = options.device == "gpu" or (options.device is None and options.backend != "python")
    config.instance_group.add(count=options.instances, kind=pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU)
    if spec.kind == "step":
        _sequence_batching(config, spec, options, states, batched, pb)
    elif batched:
        opt = next((t.opt_shape[0] for t in spec.inputs if t.opt_shape), None)
        config.dynamic_batching.max_queue_delay_microseconds = options.queue_delay_us
        if opt and 1 < opt <= config.max_batch_size:
            config.dynamic_batching.preferred_batch_size.append(opt)
    if options.backend == "python":
        parameters = {"model_file": model_file, "threads": options.threads, "device": "cuda" if gpu else "cpu"}
        if spec.kind == "step":
            parameters |= {"max_sequences": sequence_slots(options, config.max_batch_size), "max_chunk": max_chunk(spec, options)}
        for key, value in parameters.items():
            config.parameters[key].string_value = str(value)
    return config


def _sequence_batching(config, spec: GraphSpec, options: RepoOptions, states, batched: bool, pb) -> None:
    seq = config.sequence_batching
    seq.max_sequence_idle_microseconds = int(options.idle_timeout_s * 1e6)
    if options.strategy == "oldest":
        seq.oldest.max_candidate_sequences = options.max_sequences
        seq.oldest.max_queue_delay_microseconds = options.queue_delay_us
        seq.oldest.preserve_ordering = True
    else:
        seq.direct.max_queue_delay_microseconds = options.queue_delay_us
    if options.backend == "python":
        for name, kind in CONTROL_INPUTS.items():
            control = seq.control_input.add(name=name).control.add(kind=getattr(pb.ModelSequenceBatching.Control, kind))
            control.int32_false_true.extend([0, 1])
    shapes = {t.name: t for t in spec.inputs}
    for layer in states:
        for past, present in ((layer.past[key], layer.present[key]) for key in ("mean", "count")):
            tensor = shapes[past]
            dims = triton_dims(tensor.shape, batched)
            state = seq.state.add(input_name=past, output_name=present, data_type=TRITON_DTYPES[tensor.dtype], dims=dims)
            state.initial_state.add(name="zeros", data_type=TRITON_DTYPES[tensor.dtype], dims=dims, zero_data=True)


def config_text(config) -> str:
    _, text_format = model_config_schema()
    return text_format.MessageToString(config)


def parse_config(text: str):
    """Parse ``config.pbtxt`` text with Triton's own schema; ServingError on anything it rejects."""
    pb, text_format = model_config_schema()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise ServingError(f"config.pbtxt does not parse as Triton's ModelConfig: {exc}") from None


# --- checks against the model --------------------------------------------------------------

def check_config(config, spec: GraphSpec, model_io: dict[str, dict[str, TensorSpec]]) -> None:
    """Raise ServingError when ``config`` would not serve the model whose file has ``model_io``
    (``{"inputs": {name: TensorSpec}, "outputs": {...}}``, read from the file itself)."""
    pb, _ = model_config_schema()
    batched = config.max_batch_size > 0
    dtype_names = {v: k for k, v in TRITON_DTYPES.items()}
    python = config.backend == "python"

    def check(kind: str, name: str, data_type: int, dims: list[int]) -> None:
        tensor = model_io[kind].get(name)
        if tensor is None:
            raise ServingError(f"config {kind[:-1]} {name!r} is not in the model (it has {', '.join(sorted(model_io[kind]))})")
        dtype = dtype_names.get(pb.DataType.Name(data_type))
        if dtype != tensor.dtype:
            raise ServingError(f"config {kind[:-1]} {name!r} is {pb.DataType.Name(data_type)}, the model's is {tensor.dtype}")
        full = ([-1] if batched else []) + list(dims)
        if len(full) != len(tensor.shape):
            raise ServingError(f"config {kind[:-1]} {name!r} has {len(full)} dims {full} (batch included), the model's has {tensor.shape}")
        if batched and not isinstance(tensor.shape[0], str):
            raise ServingError(f"max_batch_size {config.max_batch_size}: the model's {name!r} has a fixed batch dim {tensor.shape[0]}")
        for axis, (want, got) in enumerate(zip(tensor.shape, full)):
            if isinstance(want, int) and got != want:
                raise ServingError(f"config {kind[:-1]} {name!r} axis {axis} is {got}, the model's is {want}")

    covered = {"inputs": set(), "outputs": set()}
    controls = {c.name for c in config.sequence_batching.control_input}
    for tensor in config.input:
        check("inputs", tensor.name, tensor.data_type, list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims))
        covered["inputs"].add(tensor.name)
    for tensor in config.output:
        check("outputs", tensor.name, tensor.data_type, list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims))
        covered["outputs"].add(tensor.name)
    for state in config.sequence_batching.state:
        check("inputs", state.input_name, state.data_type, list(state.dims))
        check("outputs", state.output_name, state.data_type, list(state.dims))
        if len(state.initial_state) != 1 or list(state.initial_state[0].dims) != list(state.dims) or not state.initial_state[0].zero_data:
            raise ServingError(f"state {state.input_name!r} needs one zero initial_state with its dims {list(state.dims)}")
        covered["inputs"].add(state.input_name)
        covered["outputs"].add(state.output_name)
    if spec.kind == "step":
        _check_step(config, spec, python, controls)
    missing = sorted(set(model_io["inputs"]) - covered["inputs"])
    if missing and not python:  # the python model feeds the state inputs itself
        raise ServingError(f"model input {missing[0]!r} is neither a config input nor a state")
    if python and set(missing) - spec.state_input_names:
        raise ServingError(f"model input {sorted(set(missing) - spec.state_input_names)[0]!r} is not a config input")


def _check_step(config, spec: GraphSpec, python: bool, controls: set[str]) -> None:
    if not config.HasField("sequence_batching"):
        raise ServingError("a step graph needs sequence_batching in its config (its state belongs to one sequence)")
    if python:
        if set(CONTROL_INPUTS) - controls:
            raise ServingError(f"the python model needs the control inputs {', '.join(CONTROL_INPUTS)}")
        exposed = sorted({t.name for t in [*config.input, *config.output]} & (spec.state_input_names | set(spec.state_output_names)))
        if exposed:
            raise ServingError(f"state tensor {exposed[0]!r} is a config input/output; the python model keeps the state itself")
        return
    pairs = {(s.input_name, s.output_name) for s in config.sequence_batching.state}
    for layer in spec.state:
        for pair in ((layer.past[key], layer.present[key]) for key in ("mean", "count")):
            if pair not in pairs:
                raise ServingError(f"state {pair[0]} -> {pair[1]} of layer {layer.index} is not an implicit state of the config")


def summary(config) -> dict[str, Any]:
    """A few facts for the repository's README and the CLI's one-line report."""
    seq = config.sequence_batching if config.HasField("sequence_batching") else None
    return {
        "max_batch_size": config.max_batch_size,
        "batching": ("sequence (" + seq.WhichOneof("strategy_choice") + ")") if seq else
                    ("dynamic" if config.HasField("dynamic_batching") else "none"),
        "states": len(seq.state) if seq else 0,
        "instances": sum(g.count for g in config.instance_group),
    }
