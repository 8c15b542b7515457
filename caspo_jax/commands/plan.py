"""`caspo-jax plan`: per-device memory and tokens/s of a config on TPU slices or GPUs, before renting one.

    caspo-jax plan --config configs/caspo_qwen3_8b_base_math.yaml                # every common slice
    caspo-jax plan --config FILE --slice v5p-64 [--mfu 0.4] [--mbu 0.5] [--json]  # one slice in detail
    caspo-jax plan --config train.yaml --model Qwen2.5-0.5B [key=value ...]       # a TrainConfig YAML

The config is a CaspoConfig (its `train` section is planned) or a TrainConfig. The model is --model,
else the CaspoConfig's `model`: an HF folder (its config.json is read) or, when that folder is not
here yet, a known architecture named by the folder's last part (`KNOWN_MODELS`). Numbers come from
`caspo_jax.parallel.plan`; a -1 mesh axis takes the slice's remaining chips.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from caspo_jax.config import CaspoConfig, TrainConfig, apply_overrides, from_dict, load_yaml

_QWEN3 = {"model_type": "qwen3", "vocab_size": 151936, "head_dim": 128, "num_key_value_heads": 8,
          "rope_theta": 1000000.0, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6}  # fmt: skip
_QWEN25 = {"model_type": "qwen2", "vocab_size": 151936, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
           "rms_norm_eps": 1e-6}  # fmt: skip
_QWEN25_7B = {**_QWEN25, "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
              "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}
# Architectures of public checkpoints (their config.json fields), for planning before downloading.
KNOWN_MODELS: dict[str, dict] = {
    "qwen3-0.6b": {**_QWEN3, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "tie_word_embeddings": True},
    "qwen3-1.7b": {**_QWEN3, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "tie_word_embeddings": True},
    "qwen3-4b": {**_QWEN3, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "tie_word_embeddings": True},
    "qwen3-8b": {**_QWEN3, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "tie_word_embeddings": False},
    "qwen2.5-0.5b": {**_QWEN25, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "qwen2.5-1.5b": {**_QWEN25, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "qwen2.5-7b": _QWEN25_7B,
    "qwen2.5-math-7b": {**_QWEN25_7B, "rope_theta": 10000.0, "max_position_embeddings": 4096},
    "llama-3.1-8b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "rope_theta": 500000.0, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                     "tie_word_embeddings": False,
                     "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
}  # fmt: skip


def known_model_key(name: str) -> str:
    """'/models/Qwen3-8B-Base' -> 'qwen3-8b' (suffixes -base, -instruct and meta-llama's 'meta-' dropped)."""
    key = Path(name).name.lower().removeprefix("meta-")
    for suffix in ("-instruct", "-base"):
        key = key.removesuffix(suffix)
    return key


def resolve_model(name: str | None):
    """(display name, ModelConfig) of an HF folder, a known architecture, or the arith demo's tiny model."""
    from caspo_jax.model import hf_config

    if name is None:
        from caspo_jax.caspo.loop import tiny_model_config

        return "tiny arith model", tiny_model_config()
    if (Path(name) / "config.json").exists():
        return Path(name).name, hf_config.read_config(name)
    key = known_model_key(name)
    if key not in KNOWN_MODELS:
        raise ValueError(
            f"model {name!r}: no config.json there and not a known architecture; pass --model with an HF "
            f"folder or one of {sorted(KNOWN_MODELS)}"
        )
    return Path(name).name, hf_config.config_from_hf(KNOWN_MODELS[key], f"known architecture {key}")


def load_train_config(path: Path | None, overrides: list[str]) -> tuple[TrainConfig, str | None]:
    """(TrainConfig, the CaspoConfig's model or None) from a CaspoConfig or TrainConfig YAML."""
    data = load_yaml(path, overrides) if path else apply_overrides({}, overrides)
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    if data and set(data) <= train_keys:
        return from_dict(TrainConfig, data), None
    caspo = from_dict(CaspoConfig, data)
    return caspo.train, caspo.model


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def _row(p) -> dict:
    return {
        "slice": p.slice, "chips": p.chips, "mesh d/f/t": "x".join(map(str, p.mesh)),
        "params GiB": _gib(p.param_bytes), "grads GiB": _gib(p.grad_bytes), "adam GiB": _gib(p.optimizer_bytes),
        "acts GiB": _gib(p.activation_bytes), "total GiB": _gib(p.total_bytes), "HBM GiB": _gib(p.hbm_bytes),
        "fits": "yes" if p.fits else "NO", "train tok/s/chip": f"{p.train_tokens_per_s_per_chip:,.0f}",
        "s/step": f"{p.step_seconds:.1f}", "decode tok/s/chip": f"{p.decode_tokens_per_s_per_chip:,.0f}",
    }  # fmt: skip


def format_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(r[c]).rjust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="CaspoConfig or TrainConfig YAML")
    parser.add_argument("--model", default=None, help="HF folder or known architecture (default: the config's)")
    parser.add_argument("--slice", action="append", default=None,
                        help="e.g. v4-8, v5e-16, v5p-64, h100-8 (repeatable; default: a list of common slices)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for training")
    parser.add_argument("--mbu", type=float, default=0.5, help="HBM bandwidth utilisation assumed for decoding")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per packed row (default: data.max_length)")
    parser.add_argument("--decode-len", type=int, default=2048, help="prompt + new tokens per sampled sequence")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. train.batch_size=128")


def run(args: argparse.Namespace) -> int:
    from caspo_jax.parallel import plan as plan_lib  # imports jax: keep `--help` fast

    train, config_model = load_train_config(args.config, args.overrides)
    name, model = resolve_model(args.model or config_model)
    plans = []
    for slice_name in args.slice or plan_lib.SLICES:
        chip, chips = plan_lib.parse_slice(slice_name)
        try:
            plans.append(plan_lib.plan(model, train, chip, chips, name=name, slice_name=slice_name, mfu=args.mfu,
                                       mbu=args.mbu, seq_len=args.seq_len, decode_len=args.decode_len))
        except ValueError as e:  # the configured mesh does not fit this slice
            if args.slice:
                raise ValueError(f"slice {slice_name}: {e}") from None
    if not plans:
        raise ValueError(f"mesh {train.mesh} fits none of {plan_lib.SLICES}: pass --slice")
    if args.json:
        print(json.dumps([p.as_dict() for p in plans], indent=1))
        return 0
    first = plans[0]
    print(f"{name}: {first.num_params:,} params; train {train.param_dtype} params, {train.compute_dtype} compute, "
          f"remat={train.remat}, batch {train.batch_size} x {first.seq_len} tokens, grad_accum {train.grad_accum}, "
          f"mesh {train.mesh}")
    print(f"per device; fits = total <= 90% of HBM; training at MFU {args.mfu}, "
          f"{first.train_flops_per_token / 1e9:.1f} GFLOP/token; decoding at {args.mbu} of HBM bandwidth, "
          f"{args.decode_len}-token sequences, {_gib(first.kv_bytes_per_token * 2**20)} GiB KV cache per 1M tokens")
    print(format_table([_row(p) for p in plans]))
    return 0


COMMAND = (arguments, run)
