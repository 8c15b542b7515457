"""Config dataclasses, YAML loading and dotted overrides."""

import dataclasses

import pytest

from caspo_jax.config import MeshConfig, ModelConfig, apply_overrides, from_dict, load_yaml


@dataclasses.dataclass(frozen=True)
class Outer:
    mesh: MeshConfig = MeshConfig()
    name: str = "x"
    steps: int = 1
    bf16: bool = False
    ids: tuple[int, ...] = ()


def test_overrides_reach_nested_keys_and_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mesh:\n  data: 2\nname: run\n")
    data = load_yaml(path, ["mesh.tensor=4", "steps=10", "bf16=true", "ids=[1, 2]"])
    config = from_dict(Outer, data)
    assert config == Outer(mesh=MeshConfig(data=2, fsdp=-1, tensor=4), name="run", steps=10, bf16=True, ids=(1, 2))


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"unknown config key mesh.tensr"):
        from_dict(Outer, {"mesh": {"tensr": 2}})


def test_wrong_type_is_named():
    with pytest.raises(ValueError, match=r"steps: expected int, got 'ten'"):
        from_dict(Outer, {"steps": "ten"})
    with pytest.raises(ValueError, match=r"bf16: expected true/false"):
        from_dict(Outer, {"bf16": "maybe"})


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ValueError, match="expected key=value"):
        apply_overrides({}, ["steps"])


def test_model_config_validates_and_hashes():
    config = ModelConfig("llama", 10, 8, 16, 1, 2, 1, 4, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    assert hash(config) == hash(config.replace())  # usable as a static jit argument
    assert config.rope_scaling_dict == {"rope_type": "llama3", "factor": 8.0}
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig("gpt2", 10, 8, 16, 1, 2, 1, 4)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ModelConfig("llama", 10, 8, 16, 1, 3, 2, 4)
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig("llama", 10, 8, 16, 1, 2, 1, 4, dtype="int8")
