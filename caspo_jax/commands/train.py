"""`caspo-jax dpo | sft`: preference or supervised training of an HF model folder on a record file.

    caspo-jax dpo --model DIR --pairs FILE --out DIR [--config YAML] [--resume] [key=value ...]
    caspo-jax sft --model DIR --data FILE --out DIR [--config YAML] [--resume] [key=value ...]

Overrides are dotted TrainConfig keys (`optim.learning_rate=5e-7 dpo.beta=0.1 batch_size=64`). A loss
that turns nan/inf stops the run with exit status 1, keeping the last good checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from caspo_jax.config import TrainConfig, apply_overrides, from_dict, load_yaml


def _arguments(data_flag: str, data_help: str):
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", type=Path, required=True, help="HF model folder (weights and tokenizer)")
        parser.add_argument(data_flag, dest="records", type=Path, required=True, help=data_help)
        parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, metrics, model/")
        parser.add_argument("--config", type=Path, default=None, help="YAML TrainConfig")
        parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
        parser.add_argument("overrides", nargs="*", help="dotted key=value TrainConfig overrides")

    return add


def _run(mode: str):
    def run(args: argparse.Namespace) -> int:
        data = load_yaml(args.config, args.overrides) if args.config else apply_overrides({}, args.overrides)
        if data.setdefault("mode", mode) != mode:
            raise ValueError(f"mode: the {mode} command trains mode={mode}, the config says {data['mode']!r}")
        config = from_dict(TrainConfig, data)
        logging.basicConfig(format="%(message)s")
        logging.getLogger("caspo_jax").setLevel(logging.INFO)
        from caspo_jax.train import trainer  # imports jax: keep `--help` fast

        try:
            final = trainer.train(config, args.model, args.records, args.out, resume=args.resume)
        except trainer.TrainingDiverged as e:
            print(f"caspo-jax {mode}: error: {e}", file=sys.stderr)
            return 1
        shown = {k: round(v, 4) for k, v in final.items() if k in ("step", "loss", "rewards/accuracies")}
        print(f"{mode} done: {shown}; model written to {args.out / 'model'}")
        return 0

    return run


DPO = (_arguments("--pairs", "jsonl/parquet with prompt, chosen, rejected[, weight]"), _run("dpo"))
SFT = (_arguments("--data", "jsonl/parquet with prompt and completion (or chosen)[, weight]"), _run("sft"))
