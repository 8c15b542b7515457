"""Shared by the benchmark scripts: the offline benchmark model, timing, and JSON output.

Every benchmark runs with no arguments (building what it needs offline) and takes `--model DIR` for
any Hugging Face folder. The default model is the one the issues name: a Qwen3-style decoder with 4
layers, d=256, vocab 32000, random weights, written once by our own `hf.save` and cached.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

CACHE = Path(os.environ.get("CASPO_JAX_CACHE", Path.home() / ".cache" / "caspo-jax")) / "bench"


def default_model_dir() -> Path:
    """The 4-layer, d=256, vocab-32000 Qwen3-style model folder, built on first use."""
    path = CACHE / "qwen3-4l-256d-32k"
    if (path / "config.json").exists():
        return path
    import jax

    from caspo_jax.config import ModelConfig
    from caspo_jax.model import hf, qwen

    config = ModelConfig(
        "qwen3", vocab_size=32000, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=64, qk_norm=True, rope_theta=1e6, tie_word_embeddings=True,
        bos_token_id=1, eos_token_ids=(2,), pad_token_id=0,
    )
    return hf.save(path, config, qwen.init_params(config, jax.random.key(0)))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", type=Path, default=None, help="HF model folder (default: built offline)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per measurement (median)")
    return p


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def emit(result: dict) -> None:
    """Prints the one JSON line a benchmark reports."""
    print(json.dumps(result, sort_keys=True))
