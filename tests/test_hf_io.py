"""Checkpoint import/export: round trips, transformers reading our folders, bf16, bad input."""

import json

import numpy as np
import pytest
import torch
import transformers
import jax
import jax.numpy as jnp

from caspo_jax.model import hf, qwen, tensor_files
from hf_models import VOCAB, make_hf_model, save_hf_model, torch_logits


def leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.mark.parametrize("variant", ["qwen2", "qwen3", "llama"])
def test_round_trip_is_bit_exact_and_transformers_loads_ours(variant, tmp_path):
    source = save_hf_model(variant, tmp_path / "source")
    config, params = hf.load(source)
    hf.save(tmp_path / "ours", config, params)
    config_back, params_back = hf.load(tmp_path / "ours")
    assert config_back == config
    for a, b in zip(leaves(params), leaves(params_back)):
        np.testing.assert_array_equal(a, b)

    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager")
    tokens = np.random.RandomState(0).randint(0, VOCAB, (2, 16))
    ours = np.asarray(qwen.forward(params, config, jnp.asarray(tokens)))
    np.testing.assert_allclose(torch_logits(theirs, tokens), ours, atol=1e-4)
    written = set(tensor_files.SafetensorsFile(tmp_path / "ours" / hf.SAFE_WEIGHTS).keys())
    assert ("lm_head.weight" in written) == (not config.tie_word_embeddings)


def test_transformers5_config_form_is_read(tmp_path):
    source = save_hf_model("llama", tmp_path / "m")
    written = json.loads((source / "config.json").read_text())
    assert "rope_parameters" in written  # transformers 5 writes this form; the hub form is tested above
    config, _ = hf.load(source)
    assert config.rope_theta == 5e5 and config.rope_scaling_dict["factor"] == 8.0


def test_bf16_checkpoint_loads_exactly(tmp_path):
    source = save_hf_model("qwen2", tmp_path / "bf16", dtype=torch.bfloat16)
    config, params = hf.load(source)
    assert config.param_dtype == "bfloat16" and params["embed"]["embedding"].dtype == jnp.bfloat16
    reference = make_hf_model("qwen2").to(torch.bfloat16).state_dict()["model.embed_tokens.weight"]
    np.testing.assert_array_equal(
        np.asarray(params["embed"]["embedding"], dtype=np.float32), reference.float().numpy()
    )
    config32, params32 = hf.load(source, dtype="float32")
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, VOCAB, (1, 12)))
    a = np.asarray(qwen.forward(params, config, tokens))
    b = np.asarray(qwen.forward(params32, config32, tokens))
    assert np.abs(a - b).max() < 0.05


def test_sharded_save_writes_an_index_that_transformers_reads(tmp_path):
    config, params = hf.load(save_hf_model("qwen3", tmp_path / "src"))
    out = hf.save(tmp_path / "sharded", config, params, max_shard_bytes=40_000)
    index = json.loads((out / hf.SAFE_INDEX).read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 2 and all((out / f).exists() for f in files)
    _, params_back = hf.load(out)
    for a, b in zip(leaves(params), leaves(params_back)):
        np.testing.assert_array_equal(a, b)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    tokens = np.arange(10)[None]
    np.testing.assert_allclose(
        torch_logits(theirs, tokens), np.asarray(qwen.forward(params, config, jnp.asarray(tokens))), atol=1e-4
    )


def test_save_bf16_and_copy_tokenizer(tmp_path):
    config, params = hf.load(save_hf_model("qwen2", tmp_path / "src"))
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    (tok_dir / "tokenizer_config.json").write_text("{}")
    out = hf.save(tmp_path / "bf", config, params, dtype="bfloat16", tokenizer_dir=tok_dir)
    assert (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists()
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    config_bf, params_bf = hf.load(out)
    assert config_bf.param_dtype == "bfloat16"
    np.testing.assert_array_equal(
        np.asarray(params_bf["embed"]["embedding"]), np.asarray(params["embed"]["embedding"].astype(jnp.bfloat16))
    )


# ----------------------------------------------------------------------------------------------------
# Bad input: one clear error naming the file and the key.


@pytest.fixture()
def folder(tmp_path):
    return save_hf_model("qwen2", tmp_path / "m")


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_config(folder):
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load(folder)


def test_missing_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.load(folder)


def test_unsupported_model_type(folder):
    edit_config(folder, model_type="gpt2")
    with pytest.raises(ValueError, match=r"config.json.*model_type 'gpt2'"):
        hf.load(folder)


def test_unknown_dtype(folder):
    edit_config(folder, dtype="float8", torch_dtype="float8")
    with pytest.raises(ValueError, match=r"config.json.*dtype 'float8'"):
        hf.load(folder)


def test_unknown_requested_dtype(folder):
    with pytest.raises(ValueError, match="dtype 'int4'"):
        hf.load(folder, dtype="int4")


def test_wrong_shape_names_file_and_key(folder):
    edit_config(folder, intermediate_size=96)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor .model.layers.0.mlp.down_proj.weight. has shape \(64, 128\), expected \(64, 96\)"):
        hf.load(folder)


def test_missing_key_names_file_and_key(folder):
    f = tensor_files.SafetensorsFile(folder / "model.safetensors")
    kept = {k: np.array(f[k]) for k in f.keys() if k != "model.layers.1.self_attn.k_proj.bias"}
    del f
    tensor_files.write(folder / "model.safetensors", kept)
    with pytest.raises(KeyError, match=r"model.layers.1.self_attn.k_proj.bias.*model.safetensors"):
        hf.load(folder)


def test_failed_save_leaves_target_untouched(folder, tmp_path, monkeypatch):
    config, params = hf.load(folder)
    target = tmp_path / "target"
    hf.save(target, config, params)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken_write(path, tensors, metadata=None):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tensor_files, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        hf.save(target, config, params)
    with pytest.raises(OSError):
        hf.save(tmp_path / "fresh", config, params)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_not_a_safetensors_file(folder):
    (folder / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(ValueError, match="model.safetensors: not a safetensors file"):
        hf.load(folder)
