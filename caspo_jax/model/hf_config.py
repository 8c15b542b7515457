"""Hugging Face config.json <-> ModelConfig, in both forms Hugging Face writes.

Hub files carry `rope_theta`, `rope_scaling` and `torch_dtype` at the top level; transformers 5
writes `rope_parameters` and `dtype`. Both are read; the hub form is written, since transformers 4
and 5 and vLLM all read it. Errors name the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path

from caspo_jax.config import DTYPES, ModelConfig

ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}




def config_from_hf(hf: dict, source: str | Path = "config.json") -> ModelConfig:
    """Reads an HF config dict (either the hub or the transformers-5 form); errors name `source`."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported; expected one of {sorted(ARCHITECTURES)}"
        )
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(hf.get(key), int):
            raise ValueError(f"{source}: key {key!r} missing or not an integer")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported; expected 'silu'")
    if hf.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true is not supported")
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    if not rope:
        rope = dict(hf.get("rope_scaling") or {})
    scaling = rope if rope.get("rope_type", rope.get("type", "default")) != "default" else None
    dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"{source}: dtype {dtype!r} is not supported; expected one of {DTYPES}")
    eos = hf.get("eos_token_id")
    heads = hf["num_attention_heads"]
    attention_bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=float(theta),
        rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=model_type != "qwen2" and attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
        pad_token_id=hf.get("pad_token_id"),
        param_dtype=dtype,
        dtype=dtype,
    )


def config_to_hf(config: ModelConfig, dtype: str) -> dict:
    """The config.json dict (hub form, which transformers 4/5 and vLLM all read)."""
    eos = list(config.eos_token_ids)
    out = {
        "architectures": [ARCHITECTURES[config.model_type]],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling_dict or None,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": config.pad_token_id,
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if config.model_type == "qwen2":
        out["use_sliding_window"] = False
    else:
        out["attention_bias"] = config.o_bias
    if config.model_type == "llama":
        out["mlp_bias"] = config.mlp_bias
    return out


def read_config(path: str | Path) -> ModelConfig:
    config_file = Path(path) / "config.json"
    try:
        hf = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{config_file} not found (is {path} a Hugging Face model folder?)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from None
    return config_from_hf(hf, config_file)
