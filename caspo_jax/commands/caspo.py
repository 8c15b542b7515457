"""`caspo-jax caspo | annotate`: CASPO's rounds, and confidence + labels for existing solutions.

    caspo-jax caspo --config FILE [key=value ...]      # dotted CaspoConfig overrides, e.g. output_dir=DIR
    caspo-jax annotate --model DIR --solutions FILE --out DIR [--labeler outcome|verifier|judge]
                       [--judge-model DIR] [--signal entropy_conf] [--splitter blank_line]

`caspo` prints one line per finished stage and resumes a killed run at its first unfinished stage.
`annotate` reads JSONL records with question, answer and solution (id optional), scores each
solution's tokens by teacher forcing, labels its steps and writes the step-wise dataset to --out.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from caspo_jax.config import CaspoConfig, apply_overrides, from_dict, load_yaml
from caspo_jax.data import jsonl


def caspo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="YAML CaspoConfig (configs/caspo_*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. output_dir=DIR rounds=3")


def caspo(args: argparse.Namespace) -> int:
    data = load_yaml(args.config, args.overrides) if args.config else apply_overrides({}, args.overrides)
    cfg = from_dict(CaspoConfig, data)
    logging.basicConfig(format="%(message)s")
    from caspo_jax.caspo import loop  # imports jax: keep `--help` fast

    summaries = loop.run(cfg, progress=lambda line: print(line, flush=True))
    for s in summaries:
        print(f"round {s['round']}: pairs {s['pairs']['pairs']}, trained {s['trained']}, "
              f"accuracy {s['eval']['accuracy']:.3f}, ece {s['eval']['ece']:.3f}")
    print(f"caspo done: {cfg.output_dir}/summary.json, dataset in {cfg.output_dir}/dataset")
    return 0


def annotate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="HF model folder whose confidence is measured")
    parser.add_argument("--solutions", type=Path, required=True, help="JSONL: question, answer, solution[, id]")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--labeler", choices=("outcome", "verifier", "judge"), default="outcome")
    parser.add_argument("--judge-model", default=None, help="HF folder of the judge (labeler judge)")
    parser.add_argument("--signal", choices=("entropy_conf", "max_prob", "topk_conf"), default="entropy_conf")
    parser.add_argument("--splitter", default="blank_line", help="blank_line, step_header or a regex")
    parser.add_argument("--aggregation", choices=("mean", "min"), default="mean")


def _read_solutions(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"solutions file not found: {path}")
    records = []
    for where, row in jsonl.records(path):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object with question, answer, solution")
        for key in ("question", "answer", "solution"):
            if not isinstance(row.get(key), (str, int, float)) or not str(row[key]).strip():
                raise ValueError(f"{where}: missing or empty field {key!r} (expected question, answer, solution)")
        records.append({"question_id": str(row.get("id", where.rsplit(":", 1)[1])), "question": row["question"],
                        "reference": str(row["answer"]), "solution": row["solution"], "sample": row.get("sample", 0)})
    if not records:
        raise ValueError(f"{path}: no solutions")
    return records


def annotate(args: argparse.Namespace) -> int:
    records = _read_solutions(args.solutions)
    from caspo_jax.caspo import annotate as annotate_lib
    from caspo_jax.caspo import dataset, loop

    labeler = loop.make_labeler(args.labeler, args.judge_model)  # fails fast on a judge that cannot load
    sampler = loop.load_sampler(args.model)
    samples = annotate_lib.score_solutions(sampler, records, args.signal)
    _, rows = annotate_lib.annotate(samples, labeler, sampler.pieces, splitter=args.splitter,
                                    aggregation=args.aggregation, round_index=0)
    dataset.write_parquet(rows, args.out / "data" / "annotated.parquet")
    dataset.write_card(args.out, rows, signal=args.signal, aggregation=args.aggregation)
    right = sum(r["label"] for r in rows)
    print(f"annotate done: {len(rows)} steps of {len(samples)} solutions ({right} labelled right); dataset in {args.out}")
    return 0


CASPO = (caspo_arguments, caspo)
ANNOTATE = (annotate_arguments, annotate)
