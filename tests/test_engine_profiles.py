"""Optimization profiles from metadata and --profile (pure Python, no TensorRT)."""

import pytest

from pom_deploy.tensorrt.profiles import (
    DEFAULT_DIM_RANGES, ProfileError, ShapeRange, derive_profiles, parse_profile_arg, profiles_from_json,
    profiles_to_json, select_profile,
)
from pom_deploy.spec import TensorSpec


def video_inputs():
    return [
        TensorSpec("x", ["batch", "tokens", 16], "float32", [1, 1, 16], [1, 64, 16], [4, 512, 16]),
        TensorSpec("mask", ["batch", "tokens"], "bool", [1, 1], [1, 64], [4, 512]),
    ]


def test_parse_profile_three_shapes_and_several_inputs():
    parsed = parse_profile_arg("x:1x1x16,2x256x16,4x4096x16; mask:2x8")
    assert parsed["x"] == ShapeRange((1, 1, 16), (2, 256, 16), (4, 4096, 16))
    assert parsed["mask"] == ShapeRange((2, 8), (2, 8), (2, 8))  # one shape: fixed
    assert str(parsed["x"]) == "1x1x16,2x256x16,4x4096x16"


def test_parse_profile_name_may_contain_colons():
    assert "past:0.mean" in parse_profile_arg("past:0.mean:1x32,1x32,2x32")


@pytest.mark.parametrize("text, message", [
    ("x", "expected NAME:MIN,OPT,MAX"),
    (":1x2", "expected NAME:MIN,OPT,MAX"),
    ("x:1x2,1x3", "3 shapes"),
    ("x:1x2,1xa,1x4", "bad shape"),
    ("x:1x8,1x4,1x16", "min <= opt <= max"),
    ("x:0x8,1x8,1x8", "0 < min"),
    ("x:1x2,1x2x3,1x2", "different ranks"),
    ("x:1x2;x:1x3", "given twice"),
    (" ; ", "empty"),
])
def test_parse_profile_rejects(text, message):
    with pytest.raises(ProfileError, match=message):
        parse_profile_arg(text)


def test_default_profile_is_the_metadata_range():
    (profile,) = derive_profiles(video_inputs())
    assert profile["x"] == ShapeRange((1, 1, 16), (1, 64, 16), (4, 512, 16))
    assert profile["mask"] == ShapeRange((1, 1), (1, 64), (4, 512))


def test_override_moves_shared_symbolic_dims():
    (profile,) = derive_profiles(video_inputs(), [parse_profile_arg("x:1x1x16,2x256x16,8x4096x16")])
    assert profile["mask"] == ShapeRange((1, 1), (2, 256), (8, 4096))


def test_several_profiles():
    profiles = derive_profiles(video_inputs(), [parse_profile_arg("x:1x1x16,1x1x16,8x1x16"),
                                                parse_profile_arg("x:1x2x16,1x256x16,1x4096x16")])
    assert [p["mask"].max for p in profiles] == [(8, 1), (1, 4096)]
    assert select_profile(profiles, {"x": (4, 1, 16), "mask": (4, 1)}) == 0
    assert select_profile(profiles, {"x": (1, 100, 16), "mask": (1, 100)}) == 1
    assert select_profile(profiles, {"x": (2, 100, 16), "mask": (2, 100)}) == -1


@pytest.mark.parametrize("text, message", [
    ("x:1x1x8,1x2x8,1x4x8", "fixed to 16"),
    ("x:1x16,1x16,1x16", "has 3 dims"),
    ("y:1x1,1x1,1x1", "no input named 'y'"),
    ("x:1x1x16,1x8x16,1x8x16;mask:1x1,1x4,1x8", "dim 'tokens'"),
])
def test_override_must_fit_the_graph(text, message):
    with pytest.raises(ProfileError, match=message):
        derive_profiles(video_inputs(), [parse_profile_arg(text)])


def test_defaults_for_known_dims_without_metadata_ranges():
    (profile,) = derive_profiles([TensorSpec("chunk_in", ["batch", "chunk", 8], "float32")])
    assert profile["chunk_in"] == ShapeRange(
        *(tuple(t) + (8,) for t in zip(DEFAULT_DIM_RANGES["batch"], DEFAULT_DIM_RANGES["chunk"])))


def test_unknown_dim_without_range_asks_for_profile():
    inputs = [TensorSpec("z", ["height"], "float32")]
    with pytest.raises(ProfileError, match="--profile z:MIN,OPT,MAX"):
        derive_profiles(inputs)
    (profile,) = derive_profiles(inputs, [parse_profile_arg("z:1,8,32")])
    assert profile["z"].opt == (8,)


def test_json_round_trip():
    profiles = derive_profiles(video_inputs())
    assert profiles_from_json(profiles_to_json(profiles)) == profiles
