"""`caspo-jax selfcheck | convert | inspect`: model-folder tools that need no training data.

Each command is a pair (add_arguments(parser), run(args) -> exit code) registered by `caspo_jax.cli`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from caspo_jax.config import DTYPES, ModelConfig
from caspo_jax.model import hf, qwen

FIXED_PROMPT = np.arange(3, 19, dtype=np.int32)[None]  # [1, 16] token ids, the same for every model


def _fixed_logits(config: ModelConfig, params: dict) -> np.ndarray:
    tokens = jnp.asarray(FIXED_PROMPT % config.vocab_size)
    return np.asarray(jax.jit(qwen.forward, static_argnums=1)(params, config, tokens))


def _torch_logits(path: Path, tokens: np.ndarray) -> np.ndarray | None:
    try:
        import torch
        import transformers
    except ImportError:
        return None
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


# ----------------------------------------------------------------------------------------------------


def selfcheck_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="keep the tiny model here")


def selfcheck(args: argparse.Namespace) -> int:
    config = ModelConfig(
        "qwen3", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, qk_norm=True, rope_theta=1e6, tie_word_embeddings=True, eos_token_ids=(2,),
    )
    params = qwen.init_params(config, jax.random.key(0))
    with tempfile.TemporaryDirectory() as tmp:
        first = hf.save(args.out or Path(tmp) / "tiny-qwen3", config, params)
        config_back, loaded = hf.load(first)
        second = hf.save(Path(tmp) / "round-trip", config_back, loaded)
        _, reloaded = hf.load(second)
        exact = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded))
        )
        ours = _fixed_logits(config_back, loaded)
        theirs = _torch_logits(first, FIXED_PROMPT)
    print(f"tiny Qwen3 written to {first} ({config.num_params:,} params)")
    print(f"round trip load -> save -> load bit-exact: {exact}")
    if theirs is None:
        print("transformers parity: skipped (torch not installed)")
        diff = 0.0
    else:
        diff = float(np.abs(ours - theirs).max())
        print(f"transformers parity (eager, fp32): max |logits diff| = {diff:.2e}")
    ok = exact and diff <= 1e-4
    print("selfcheck: OK" if ok else "selfcheck: FAILED")
    return 0 if ok else 1


# ----------------------------------------------------------------------------------------------------


def convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", type=Path, required=True, help="HF model folder")
    parser.add_argument("--to", dest="target", type=Path, required=True, help="output folder")
    parser.add_argument("--dtype", choices=DTYPES + ("bf16", "fp32", "fp16"), default=None)


_SHORT = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def convert(args: argparse.Namespace) -> int:
    dtype = _SHORT.get(args.dtype, args.dtype)
    config, params = hf.load(args.source, dtype=dtype)
    original = json.loads((args.source / "config.json").read_text())
    tokenizer_dir = args.source if any((args.source / f).exists() for f in hf.TOKENIZER_FILES) else None
    out = hf.save(args.target, config, params, tokenizer_dir=tokenizer_dir, extra_config=original)
    print(f"wrote {out} ({config.model_type}, {config.num_params:,} params, {config.param_dtype})")
    return 0


# ----------------------------------------------------------------------------------------------------


def inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="HF model folder")


def inspect(args: argparse.Namespace) -> int:
    config, params = hf.load(args.model)
    logits = _fixed_logits(config, params)
    summary = {
        "model_type": config.model_type,
        "layers": config.num_layers,
        "hidden": config.hidden_size,
        "heads": f"{config.num_heads} q / {config.num_kv_heads} kv x {config.head_dim}",
        "mlp": config.intermediate_size,
        "vocab": config.vocab_size,
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling_dict or None,
        "tied_embeddings": config.tie_word_embeddings,
        "params": config.num_params,
        "dtype": config.param_dtype,
        "logits_checksum": {
            "prompt_ids": f"{FIXED_PROMPT[0, 0]}..{FIXED_PROMPT[0, -1]}",
            "sum": float(logits.sum()),
            "abs_mean": float(np.abs(logits).mean()),
            "argmax_last": int(logits[0, -1].argmax()),
        },
    }
    print(json.dumps(summary, indent=2))
    return 0


SELFCHECK = (selfcheck_arguments, selfcheck)
CONVERT = (convert_arguments, convert)
INSPECT = (inspect_arguments, inspect)
