"""CaT against its baselines on one model and the same questions, in one run.

Methods (all through `caspo_jax.eval.decoders.METHODS`, on the same sampler): greedy chain of thought,
self-consistency@K, DeepConf-online@K and CaT@K (K = 10). Questions: arithmetic chains from
`caspo_jax.data.arith`. Measured per method: tokens per question, latency per question (median wall
time of the whole batch / questions, after a warm-up that compiles), throughput (tokens/s) and
accuracy; for CaT also accuracy against tokens over a sweep of tau, and the cost of the confidence
signals per decode step (greedy decode with signals against without, same batch).

The default model (benchmarks/common.py) has random weights and comes with an offline character
tokenizer padded to its 32000 ids: its accuracy is meaningless and its steps rarely end before
--step-tokens, so it measures cost only. Pass --model DIR (with its tokenizer) for real numbers.

    python benchmarks/cat.py [--model DIR] [--questions 4] [--tau 0.0] [--repeats 1]

Prints one JSON line with `speedup_vs_sc` (SC latency / CaT latency), `token_ratio_vs_sc` (CaT tokens
/ SC tokens) and `accuracy` per method.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

K = 10
TAUS = (0.0, 0.005, 0.01, 0.02, 0.05)


def offline_tokenizer(vocab_size: int):
    """Characters (ids 3..) and filler pieces up to vocab_size, ids 0..2 = <pad>, <s>, </s>."""
    path = common.CACHE / f"char-tokenizer-{vocab_size}"
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if not (path / "tokenizer.json").exists():
        pieces = ["<pad>", "<s>", "</s>"] + [chr(c) for c in range(32, 127)] + ["\n"]
        pieces += [f"<{i}>" for i in range(vocab_size - len(pieces))]
        tok = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<pad>"))
        tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
        tok.decoder = decoders.Fuse()
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
        fast.save_pretrained(path)
    return transformers.AutoTokenizer.from_pretrained(path)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--step-tokens", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--tau", type=float, default=0.0,
                   help="CaT's tau for the headline numbers (the random default model's confidences are ~0.01)")
    p.set_defaults(repeats=1)
    args = p.parse_args()
    model_dir = args.model or common.default_model_dir()

    import dataclasses

    import numpy as np

    from caspo_jax.config import CaTConfig, EvalConfig
    from caspo_jax.data import arith, grading, prompts
    from caspo_jax.eval import decoders
    from caspo_jax.infer import stops
    from caspo_jax.infer.sampler import Sampler, SamplingConfig
    from caspo_jax.model import hf
    from caspo_jax.model import tokenizer as tokenizer_lib

    config, params = hf.load(model_dir)
    if args.model is not None and (model_dir / "tokenizer_config.json").exists():
        tokenizer = tokenizer_lib.load_tokenizer(model_dir)
    else:
        tokenizer = offline_tokenizer(config.vocab_size)
    sampler = Sampler(config, params, tokenizer)
    pieces = stops.token_pieces(tokenizer, config.vocab_size)
    rng = np.random.default_rng(0)
    problems = [arith.sample_problem(rng) for _ in range(args.questions)]
    ids = tokenizer_lib.encode(tokenizer, [prompts.build_prompt(q.question, None) for q in problems])
    length = args.max_steps * args.step_tokens
    cat_cfg = CaTConfig(width=2, branch=3, budget=K, tau=args.tau, max_steps=args.max_steps, step_tokens=args.step_tokens,
                        warmup=4, window=min(64, length // 2), percentile=10.0)

    def measure(method: str, cfg: EvalConfig) -> dict:
        decisions = []

        def run():
            decisions[:] = decoders.METHODS[method](sampler, ids, cfg, pieces)

        seconds = common.median_seconds(run, args.repeats) / len(problems)
        tokens = float(np.mean([d.tokens for d in decisions]))
        right = [d.answer is not None and grading.grade_answer(d.answer, str(q.answer)) for d, q in zip(decisions, problems)]
        return {"tokens_per_question": tokens, "seconds_per_question": seconds,
                "tokens_per_second": tokens / seconds, "accuracy": float(np.mean(right))}

    base = dict(k=K, max_new_tokens=length, temperature=0.7, top_p=1.0, batch_size=len(problems), cat=cat_cfg)
    results = {
        "greedy": measure("greedy", EvalConfig(method="greedy", **{**base, "k": 1})),
        "sc": measure("sc", EvalConfig(method="sc", **base)),
        "deepconf": measure("deepconf", EvalConfig(method="deepconf", **base)),
        "cat": measure("cat", EvalConfig(method="cat", **base)),
    }
    sweep = []
    for tau in TAUS:
        cfg = EvalConfig(method="cat", **{**base, "cat": dataclasses.replace(cat_cfg, tau=tau)})
        r = measure("cat", cfg)
        sweep.append({"tau": tau, "tokens_per_question": r["tokens_per_question"], "accuracy": r["accuracy"]})

    # The confidence signals' cost per decode step: the same greedy decode with and without them.
    rows = ids * 3
    with_signals = SamplingConfig(max_new_tokens=length, step_delimiter=None)
    bare = dataclasses.replace(with_signals, signals=False)
    per_call = {
        name: common.median_seconds(lambda s=s: sampler.generate(rows, s), max(args.repeats, 3))
        for name, s in (("signals", with_signals), ("bare", bare))
    }
    step_cost = (per_call["signals"] - per_call["bare"]) / length

    common.emit({
        "benchmark": "cat",
        "model": str(args.model or "offline random qwen3-4l-256d-32k"),
        "note": None if args.model else "random weights: accuracy is meaningless, only cost is measured",
        "questions": len(problems),
        "k": K,
        "cat_config": dataclasses.asdict(cat_cfg),
        "methods": results,
        "accuracy": {m: r["accuracy"] for m, r in results.items()},
        "cat_accuracy_vs_tokens": sweep,
        "confidence_seconds_per_decode_step": step_cost,
        "confidence_overhead": per_call["signals"] / per_call["bare"] - 1,
        "speedup_vs_sc": results["sc"]["seconds_per_question"] / results["cat"]["seconds_per_question"],
        "token_ratio_vs_sc": results["cat"]["tokens_per_question"] / results["sc"]["tokens_per_question"],
        "decode_rows_for_step_cost": len(rows),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })


if __name__ == "__main__":
    main()
