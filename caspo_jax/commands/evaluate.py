"""`caspo-jax eval`: decode benchmark problems with one method, grade them, write the report.

    caspo-jax eval --model DIR --benchmarks math500,aime24 --data-dir shared/data --out runs/eval
    caspo-jax eval --model DIR --data FILE.jsonl --question-field q --answer-field a --method sc --k 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from caspo_jax.config import EVAL_METHODS, EvalConfig
from caspo_jax.data import sources
from caspo_jax.eval import report, runner
from caspo_jax.infer.sampler import Sampler
from caspo_jax.model import hf
from caspo_jax.model import tokenizer as tokenizer_lib


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="HF model folder (with its tokenizer)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: --model)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--benchmarks", help=f"comma-separated names: {', '.join(sorted(sources.BENCHMARKS))}")
    what.add_argument("--data", type=Path, help="any .jsonl file of questions")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="local folder holding <benchmark>/test.jsonl (default: the Hugging Face Hub)")
    parser.add_argument("--question-field", default="question")
    parser.add_argument("--answer-field", default="answer")
    parser.add_argument("--method", choices=EVAL_METHODS, default="greedy")
    parser.add_argument("--k", type=int, default=8, help="samples per question (sc, cat, deepconf)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None, help="param/compute dtype (default: the checkpoint's)")
    parser.add_argument("--out", type=Path, required=True)


def _problem_sets(args: argparse.Namespace) -> dict[str, list[sources.Problem]]:
    if args.data is not None:
        return {args.data.stem: sources.load_jsonl_problems(args.data, args.question_field, args.answer_field, limit=args.limit)}
    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    if not names:
        raise ValueError("--benchmarks: expected at least one name")
    return {
        n: sources.load_benchmark(n, None if args.data_dir is None else args.data_dir / n, limit=args.limit)
        for n in names
    }


def run(args: argparse.Namespace) -> int:
    cfg = EvalConfig(
        method=args.method, k=args.k if args.method != "greedy" else 1, temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
    )
    problem_sets = _problem_sets(args)  # fail on bad data before loading the model
    config, params = hf.load(args.model, dtype=args.dtype)
    tok = tokenizer_lib.load_tokenizer(args.tokenizer or args.model)
    sampler = Sampler(config, params, tok)
    rows = []
    for name, problems in problem_sets.items():
        summary = runner.evaluate(sampler, problems, cfg, args.out, name)
        rows.append({"benchmark": name, "method": cfg.method, "questions": summary["questions"],
                     "accuracy": summary["accuracy"], "ece": summary["ece"], "auroc": summary["auroc"],
                     "tokens/question": summary["tokens"]["mean"], "seconds/question": summary["seconds"]["mean"]})
        print(f"{name}: accuracy {summary['accuracy']:.4f} over {summary['questions']} questions")
    report.write_json(args.out / "summary.json", {"rows": rows})
    report.write_markdown(args.out / "summary.md", rows, title="Evaluation")
    print(report.markdown_table(rows))
    return 0


COMMAND = (add_arguments, run)
