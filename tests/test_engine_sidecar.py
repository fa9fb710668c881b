"""Engine sidecar: writing, reading, and the TensorRT-version / GPU mismatch errors
(pure functions over a 'current environment' dict; no TensorRT or GPU needed)."""

import json

import pytest

from pom_deploy.tensorrt.profiles import derive_profiles, profiles_to_json
from pom_deploy.tensorrt.sidecar import (
    EngineMismatchError, check_compatible, compatibility_problems, make_sidecar, read_sidecar, sidecar_path,
    spec_from_sidecar, write_json_atomic,
)
from pom_deploy.errors import ModelLoadError, PomDeployError
from pom_deploy.spec import GraphSpec, LayerStateSpec, TensorSpec

ORIN = {"tensorrt_version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.7"}
THOR = {"tensorrt_version": "10.13.3.9", "gpu_name": "NVIDIA Thor", "compute_capability": "11.0"}
H100 = {"tensorrt_version": "11.1.0.5", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}


def step_spec():
    return GraphSpec(
        kind="step",
        inputs=[TensorSpec("chunk", ["batch", "chunk", 16], "float32", [1, 1, 16], [1, 8, 16], [2, 64, 16]),
                TensorSpec("past.0.mean", ["batch", 64], "float32", [1, 64], [1, 64], [2, 64]),
                TensorSpec("past.0.count", ["batch", 1], "float32", [1, 1], [1, 1], [2, 1])],
        outputs=[TensorSpec("y", ["batch", "chunk", 16], "float32"), TensorSpec("present.0.mean", ["batch", 64], "float32"),
                 TensorSpec("present.0.count", ["batch", 1], "float32")],
        state=[LayerStateSpec(0, "blocks.0.mixer", 64, "past.0.mean", "past.0.count", "present.0.mean", "present.0.count")],
        fused_ops=True,
    )


def sidecar_for(environment, **options):
    spec = step_spec()
    return make_sidecar(environment=environment, precision="fp16", strongly_typed=False,
                        profiles=profiles_to_json(derive_profiles(spec.inputs)), spec=spec,
                        source_onnx={"path": "video_step.onnx", "sha256": "0" * 64},
                        plugin={"fused_nodes": 2, "library": None, "loaded_by": None, "function_stripped": False},
                        options={"version_compatible": False, "hardware_compatibility": None, **options})


def test_round_trip_keeps_versions_profiles_and_spec(tmp_path):
    engine = tmp_path / "video_step.engine"
    data = sidecar_for(ORIN)
    write_json_atomic(sidecar_path(engine), data)
    assert sidecar_path(engine).name == "video_step.engine.json"
    assert list(tmp_path.iterdir()) == [sidecar_path(engine)]  # no temp file left
    back = read_sidecar(engine)
    assert back == json.loads(json.dumps(data))
    assert back["tensorrt_version"] == "10.3.0.30" and back["compute_capability"] == "8.7" and back["precision"] == "fp16"
    assert back["profiles"][0]["chunk"] == {"min": [1, 1, 16], "opt": [1, 8, 16], "max": [2, 64, 16]}
    spec = spec_from_sidecar(back)
    assert spec == step_spec()
    assert spec.state_input_names == {"past.0.mean", "past.0.count"}


def test_missing_sidecar_is_none_and_bad_ones_are_clear(tmp_path):
    engine = tmp_path / "m.engine"
    assert read_sidecar(engine) is None and spec_from_sidecar(None) is None
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable engine sidecar"):
        read_sidecar(engine)
    sidecar_path(engine).write_text('{"format": "something-else"}')
    with pytest.raises(ModelLoadError, match="not a pom-deploy engine sidecar"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(json.dumps({**sidecar_for(ORIN), "format_version": 99}))
    with pytest.raises(ModelLoadError, match="upgrade pom-deploy"):
        read_sidecar(engine)


def test_same_environment_is_compatible():
    assert compatibility_problems(sidecar_for(ORIN), dict(ORIN)) == []
    # a different build number of the same release is the same TensorRT
    assert compatibility_problems(sidecar_for(ORIN), {**ORIN, "tensorrt_version": "10.3.0.26"}) == []


def test_other_tensorrt_version_is_a_clear_one_line_error(tmp_path):
    with pytest.raises(EngineMismatchError) as info:
        check_compatible(tmp_path / "video_step.engine", sidecar_for(THOR), {**THOR, "tensorrt_version": "10.3.0.30"})
    message = str(info.value)
    assert isinstance(info.value, PomDeployError) and "\n" not in message
    assert "TensorRT 10.13.3.9" in message and "10.3.0.30" in message
    assert "pom-deploy build-engine video_step.onnx" in message and "--force" in message


def test_other_gpu_is_a_clear_error():
    problems = compatibility_problems(sidecar_for(THOR), {**THOR, "gpu_name": "Orin", "compute_capability": "8.7"})
    assert len(problems) == 1 and "NVIDIA Thor (compute capability 11.0)" in problems[0] and "Orin" in problems[0]
    both = compatibility_problems(sidecar_for(THOR), ORIN)
    assert len(both) == 2


def test_version_compatible_engines_run_on_later_versions_of_the_major():
    built = sidecar_for(ORIN, version_compatible=True)
    assert compatibility_problems(built, {**ORIN, "tensorrt_version": "10.13.3.9"}) == []
    assert compatibility_problems(built, {**ORIN, "tensorrt_version": "10.2.0"})  # older
    assert compatibility_problems(built, {**ORIN, "tensorrt_version": "11.1.0"})  # other major


def test_hardware_compatible_engines():
    ampere = sidecar_for(H100, hardware_compatibility="ampere+")
    assert compatibility_problems(ampere, {**H100, "gpu_name": "A10", "compute_capability": "8.6"}) == []
    assert compatibility_problems(ampere, {**H100, "gpu_name": "T4", "compute_capability": "7.5"})
    same_cc = sidecar_for(H100, hardware_compatibility="same-cc")
    assert compatibility_problems(same_cc, {**H100, "gpu_name": "H200"}) == []
    assert compatibility_problems(same_cc, {**H100, "compute_capability": "10.0"})
