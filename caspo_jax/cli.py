"""The `caspo-jax` command: one subcommand per job, each a thin wrapper over the library.

Subcommands are listed in `COMMANDS` (name -> (help, "module:ATTR"), where ATTR names the
(add_arguments, run) pair in `caspo_jax.commands.<module>`). Only the chosen subcommand's module is
imported, so `caspo-jax --help` answers at once instead of loading jax and transformers. `main`
parses and dispatches. Errors a user can fix (bad paths, bad config) print one line and exit with
status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

COMMANDS: dict[str, tuple[str, str]] = {
    "selfcheck": ("build a tiny Qwen3, round-trip it, compare with transformers", "model_tools:SELFCHECK"),
    "convert": ("HF folder -> our params -> HF folder", "model_tools:CONVERT"),
    "inspect": ("summarise an HF model folder", "model_tools:INSPECT"),
    "sample": ("sample continuations of JSONL prompts with per-step confidence", "sample:SAMPLE"),
    "dpo": ("DPO/CASPO preference training of an HF model on pair records", "train:DPO"),
    "sft": ("supervised (NLL) fine-tuning on the same engine", "train:SFT"),
    "eval": ("decode benchmark problems, grade them, report accuracy, calibration and cost", "evaluate:COMMAND"),
    "cat": ("CaT confidence-aware tree search on one prompt; prints the tree", "cat:COMMAND"),
    "caspo": ("CASPO: rounds of sample, confidence, labels, step pairs and DPO, with evaluation", "caspo:CASPO"),
    "annotate": ("confidence and step labels for existing solutions -> the step-wise dataset", "caspo:ANNOTATE"),
    "plan": ("per-device memory and tokens/s of a config on TPU slices or GPUs", "plan:COMMAND"),
    "demo": ("the whole method on a laptop CPU in minutes: base model, CASPO, CaT, report", "demo:COMMAND"),
    "export": ("a checkpoint -> an HF folder with tokenizer and model card [-> the Hub]", "export:COMMAND"),
}


def load(name: str) -> tuple[Callable, Callable]:
    """The (add_arguments, run) pair of subcommand `name`, importing its module."""
    module, attribute = COMMANDS[name][1].split(":")
    return getattr(importlib.import_module(f"caspo_jax.commands.{module}"), attribute)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand listed; each one's arguments are added when `only` is None
    or names it (the others then parse no arguments, which is all `--help` needs of them)."""
    parser = argparse.ArgumentParser(prog="caspo-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            load(name)[0](command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The subcommand is the first argument that is not an option (the top level has none with values).
    chosen = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=chosen).parse_args(argv)
    run = load(args.command)[1]
    try:
        return run(args) or 0
    except (FileNotFoundError, ValueError, KeyError, PermissionError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"caspo-jax {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
