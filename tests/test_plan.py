"""`caspo-jax plan`: parameter counts against transformers, per-device memory and tokens/s against hand sums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from caspo_jax.cli import main
from caspo_jax.commands.plan import KNOWN_MODELS, resolve_model
from caspo_jax.config import MeshConfig, ModelConfig, OptimConfig, TrainConfig
from caspo_jax.parallel import plan as plan_lib

CONFIGS = Path(__file__).parent.parent / "configs"
HF_CLASSES = {"qwen2": "Qwen2", "qwen3": "Qwen3", "llama": "Llama"}


def torch_param_count(fields: dict) -> int:
    """Parameters of the transformers model built (on the meta device) from the same config.json fields."""
    name = HF_CLASSES[fields["model_type"]]
    config = getattr(transformers, f"{name}Config")(**{k: v for k, v in fields.items() if k != "model_type"})
    with torch.device("meta"):
        model = getattr(transformers, f"{name}ForCausalLM")(config)
    return sum(p.numel() for p in model.parameters())  # a tied head is one parameter


def test_qwen25_05b_has_its_published_parameter_count():
    _, config = resolve_model("Qwen/Qwen2.5-0.5B-Instruct")
    assert config.num_params == 494_032_768 == torch_param_count(KNOWN_MODELS["qwen2.5-0.5b"])


@pytest.mark.parametrize("key", ["qwen3-8b", "qwen2.5-7b", "llama-3.1-8b", "qwen3-0.6b"])
def test_known_architectures_count_what_transformers_builds(key):
    _, config = resolve_model(key)
    assert config.num_params == torch_param_count(KNOWN_MODELS[key])


def test_memory_per_device_is_the_hand_sum_of_shards():
    model = ModelConfig("qwen3", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8, qk_norm=True)  # fmt: skip
    train = TrainConfig(batch_size=16, grad_accum=2, mesh=MeshConfig(data=1, fsdp=4, tensor=2),
                        optim=OptimConfig(max_grad_norm=1.0))  # fmt: skip
    p = plan_lib.plan(model, train, plan_lib.CHIPS["v5e"], 8, seq_len=32)
    V, D, F, L, N, K, H = 64, 32, 48, 2, 4, 2, 8
    # embed over fsdp (4), vocab/heads/kv_heads/mlp over tensor (2); head_dim and layers replicated.
    elements = (
        V * D / 8 + D * V / 8  # embedding, untied head
        + L * (D * N * H + 2 * D * K * H + N * H * D) / 8  # q, k, v, o
        + L * 3 * D * F / 8  # gate, up, down
        + L * 2 * D / 4 + D / 4  # layer norms, final norm
        + L * 2 * H  # q_norm, k_norm
    )  # fmt: skip
    assert p.param_bytes == elements * 4
    assert p.optimizer_bytes == 2 * elements * 4  # AdamW mu and nu in the param dtype, sharded alike
    assert p.grad_bytes == 2 * elements * 4  # grad_accum > 1: the scan's running sum + one micro-batch's
    assert p.reference_bytes == 0 and p.mesh == (1, 4, 2) and p.micro_batch_rows_per_device == 2
    assert p.total_bytes == pytest.approx(5 * elements * 4 + p.activation_bytes)
    live = plan_lib.plan(model, train.__class__(**{**train.__dict__, "dpo": train.dpo.__class__(reference="live")}),
                         plan_lib.CHIPS["v5e"], 8, seq_len=32)  # fmt: skip
    assert live.reference_bytes == p.param_bytes


# XLA's own accounting of the compiled DPO step (state.make_train_step; Qwen2.5-0.5B, 4 rows, bf16
# params and compute, logits_chunk 64, one device): `compiled.memory_analysis().temp_size_in_bytes`,
# measured on an NVIDIA H200 with jax 0.11.2 (CUDA). Temp memory holds the gradients and activations.
H200_TEMP_GIB = {(True, 512): 1.145, (True, 1024): 1.850, (False, 512): 6.955, (False, 1024): 20.328}


@pytest.mark.parametrize("remat, seq_len", list(H200_TEMP_GIB))
def test_activation_estimate_is_near_what_xla_allocates(remat, seq_len):
    _, model = resolve_model("qwen2.5-0.5b")
    train = TrainConfig(batch_size=4, param_dtype="bfloat16", compute_dtype="bfloat16", remat=remat,
                        mesh=MeshConfig(1, 1, 1))  # fmt: skip
    p = plan_lib.plan(model, train, plan_lib.CHIPS["h200"], 1, seq_len=seq_len)
    ratio = (p.activation_bytes + p.grad_bytes) / (H200_TEMP_GIB[remat, seq_len] * 2**30)
    assert 0.9 <= ratio <= 1.5  # never far under (a "fits" that does not), at most half again over


def test_training_and_decoding_throughput_follow_the_formulas():
    _, model = resolve_model("qwen3-8b")
    train = TrainConfig(batch_size=64, param_dtype="bfloat16", compute_dtype="bfloat16", remat=True)
    chip, chips = plan_lib.parse_slice("v5p-64")
    p = plan_lib.plan(model, train, chip, chips, mfu=0.5, mbu=0.5, seq_len=2048, decode_len=1024)
    n = 8_190_735_360  # Qwen3-8B; the untied embedding lookup is not a matmul
    flops = 6 * (n - 151936 * 4096) + 12 * 36 * 32 * 128 * 2048
    assert p.train_flops_per_token == flops
    np.testing.assert_allclose(p.train_tokens_per_s_per_chip, 0.5 * 459e12 / flops)
    np.testing.assert_allclose(p.step_seconds, 64 * 2048 / (32 * 0.5 * 459e12 / flops))
    kv = 2 * 36 * 8 * 128 * 2  # K and V, every layer, bf16; tensor=1 keeps all KV heads on each device
    assert p.kv_bytes_per_token == kv
    rows = int((0.9 * 95 * 2**30 - p.param_bytes) // (kv * 1024))
    assert p.decode_rows_per_device == rows
    np.testing.assert_allclose(p.decode_tokens_per_s_per_chip, 0.5 * 2765e9 * rows / (p.param_bytes + rows * kv * 512))


@pytest.mark.parametrize(
    "name, chip, chips", [("v4-8", "TPU v4", 4), ("v5e-16", "TPU v5e", 16), ("v5p-64", "TPU v5p", 32), ("h100-8", "NVIDIA H100 SXM", 8)]
)
def test_slice_names_count_chips_as_cloud_tpu_does(name, chip, chips):
    got_chip, got_chips = plan_lib.parse_slice(name)
    assert (got_chip.name, got_chips) == (chip, chips)


def test_bad_slice_and_mesh_are_clear_errors():
    with pytest.raises(ValueError, match="v5p-64"):
        plan_lib.parse_slice("v7x-3")
    with pytest.raises(ValueError, match="cores per chip"):
        plan_lib.parse_slice("v5p-5")
    with pytest.raises(ValueError, match="does not fit"):
        plan_lib.plan(resolve_model(None)[1], TrainConfig(mesh=MeshConfig(data=3, fsdp=-1)), plan_lib.CHIPS["v4"], 4)


def test_cli_plans_the_qwen3_8b_config(capsys):
    config = str(CONFIGS / "caspo_qwen3_8b_base_math.yaml")
    assert main(["plan", "--config", config, "--slice", "v5p-64", "--slice", "v4-8", "--json"]) == 0
    v5p, v4 = json.loads(capsys.readouterr().out)
    assert v5p["num_params"] == 8_190_735_360 and v5p["chips"] == 32 and v5p["mesh"] == [1, 32, 1]
    assert v5p["param_bytes"] == pytest.approx(8_190_735_360 * 2 / 32, rel=1e-3)  # bf16, FSDP over 32 chips
    assert v5p["fits"] and v5p["seq_len"] == 2560
    assert v4["param_bytes"] == pytest.approx(v5p["param_bytes"] * 32 / 4, rel=1e-3)  # 4 chips hold 8x more each

    assert main(["plan", "--config", config]) == 0
    table = capsys.readouterr().out
    assert "8,190,735,360 params" in table
    assert all(name in table for name in plan_lib.SLICES)


def test_cli_names_an_unknown_model(capsys):
    assert main(["plan", "--model", "/nowhere/Mystery-3B"]) == 2
    assert "Mystery-3B" in capsys.readouterr().err
