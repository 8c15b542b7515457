"""`caspo-jax export`: a training checkpoint -> a Hugging Face model folder (optionally pushed to the Hub).

    caspo-jax export --checkpoint RUN_OR_STEP_DIR --out DIR [--step N] [--dtype bf16] [--model BASE_DIR]
                     [--base-model OWNER/NAME] [--push-to-hub OWNER/NAME [--private]]

--checkpoint takes a run folder (`caspo-jax dpo|sft --out`; its latest step is exported), its
checkpoints/ folder, or one step folder. The base model folder (config.json, tokenizer) is the one
the run recorded, unless --model names another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from caspo_jax.config import DTYPES

SHORT_DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="run folder, its checkpoints/, or a step folder")
    parser.add_argument("--out", type=Path, required=True, help="the Hugging Face folder to write")
    parser.add_argument("--step", type=int, default=None, help="the step to export (default: the latest)")
    parser.add_argument(
        "--dtype", choices=tuple(SHORT_DTYPES) + DTYPES, default=None,
        help="dtype of the written weights (default: the training param dtype)",
    )
    parser.add_argument("--model", type=Path, default=None, help="base model folder (default: the run's own)")
    parser.add_argument("--base-model", default=None, help="base model's Hub id for the model card")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")


def run(args: argparse.Namespace) -> int:
    from caspo_jax.train import export  # imports jax: keep `--help` fast

    dtype = SHORT_DTYPES.get(args.dtype, args.dtype)
    token = export.hub_token(args.push_to_hub) if args.push_to_hub else None  # fail before the work
    result = export.export(
        args.checkpoint, args.out, step=args.step, dtype=dtype, model_dir=args.model, base_model=args.base_model,
        repo_id=args.push_to_hub,
    )
    print(f"exported step {result.step} to {result.path} ({result.dtype})")
    if args.push_to_hub:
        url = export.push_to_hub(result.path, args.push_to_hub, private=args.private, token=token)
        print(f"pushed {result.path} to {url}")
    return 0


COMMAND = (arguments, run)
