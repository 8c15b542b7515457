"""The `caspo-jax` command: one subcommand per job, each a thin wrapper over the library.

Subcommands register themselves in `COMMANDS` (name -> (add_arguments, run)); `main` parses and
dispatches. Errors a user can fix (bad paths, bad config) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from caspo_jax.commands import caspo as caspo_commands
from caspo_jax.commands import evaluate, model_tools
from caspo_jax.commands import train as train_commands
from caspo_jax.commands import cat as cat_command
from caspo_jax.commands import demo as demo_command
from caspo_jax.commands import export as export_command
from caspo_jax.commands import sample as sample_command
from caspo_jax.commands import plan as plan_command

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "selfcheck": ("build a tiny Qwen3, round-trip it, compare with transformers", *model_tools.SELFCHECK),
    "convert": ("HF folder -> our params -> HF folder", *model_tools.CONVERT),
    "inspect": ("summarise an HF model folder", *model_tools.INSPECT),
    "sample": ("sample continuations of JSONL prompts with per-step confidence", *sample_command.SAMPLE),
    "dpo": ("DPO/CASPO preference training of an HF model on pair records", *train_commands.DPO),
    "sft": ("supervised (NLL) fine-tuning on the same engine", *train_commands.SFT),
    "eval": ("decode benchmark problems, grade them, report accuracy, calibration and cost", *evaluate.COMMAND),
    "cat": ("CaT confidence-aware tree search on one prompt; prints the tree", *cat_command.COMMAND),
    "caspo": ("CASPO: rounds of sample, confidence, labels, step pairs and DPO, with evaluation", *caspo_commands.CASPO),
    "annotate": ("confidence and step labels for existing solutions -> the step-wise dataset", *caspo_commands.ANNOTATE),
    "plan": ("per-device memory and tokens/s of a config on TPU slices or GPUs", *plan_command.COMMAND),
    "demo": ("the whole method on a laptop CPU in minutes: base model, CASPO, CaT, report", *demo_command.COMMAND),
    "export": ("a checkpoint -> an HF folder with tokenizer and model card [-> the Hub]", *export_command.COMMAND),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caspo-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, _, run = COMMANDS[args.command]
    try:
        return run(args) or 0
    except (FileNotFoundError, ValueError, KeyError, PermissionError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"caspo-jax {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
