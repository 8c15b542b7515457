"""`caspo-jax demo`: the whole of CASPO and CaT on a laptop CPU, in minutes (see caspo_jax.demo).

    caspo-jax demo [--out DIR] [--seed S] [--fast] [--from-scratch] [--signal S] [--step-aggregation mean|min]

Starts from the base model shipped with the package (--from-scratch trains it first), runs one
CASPO round with the arith verifier as labeler and a same-budget SFT control, evaluates the three
models, and writes the report into --out; a rerun into the same folder resumes where it stopped.
`--save-base DIR` (for maintainers) trains the base model and copies it to DIR, e.g. to refresh
caspo_jax/demo/base_model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("caspo_demo"), help="output folder (default: ./caspo_demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="fewer questions and votes: about a third of the time")
    parser.add_argument("--from-scratch", action="store_true", help="train the base model first instead of "
                        "starting from the shipped one")
    parser.add_argument("--signal", default="entropy_conf", choices=("entropy_conf", "max_prob", "topk_conf"),
                        help="token confidence (default: the paper's entropy_conf)")
    parser.add_argument("--step-aggregation", default="mean", choices=("mean", "min"),
                        help="step confidence from its tokens' (default: mean)")
    parser.add_argument("--save-base", type=Path, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from caspo_jax.demo import base, pipeline
    from caspo_jax.demo.settings import settings

    logging.basicConfig(format="%(message)s")
    s = settings(fast=args.fast, seed=args.seed, from_scratch=args.from_scratch or args.save_base is not None,
                 signal=args.signal, aggregation=args.step_aggregation)
    if args.save_base is not None:
        pipeline.check_writable(args.out)
        model = base.train_base(args.out / "base", s.seed, base.BaseRecipe(), pipeline.TRAIN_MESH)
        print(f"base model: {pipeline.copy_model(model, args.save_base)}")
        return 0
    pipeline.run(s, args.out)
    print(f"report: {args.out / 'report.md'} (and report.json, *.png); CASPO model: {args.out / 'model'}")
    return 0


COMMAND = (add_arguments, run)
