"""`caspo-jax cat`: CaT tree search on one prompt; prints the tree (or writes it as JSON).

    caspo-jax cat --model DIR --prompt "What is 3 + 4 * 2?" --width 2 --branch 3 --budget 10 --tau 0.5
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import json
from pathlib import Path

from caspo_jax.config import CaTConfig, MeshConfig
from caspo_jax.infer import cat, cat_tree
from caspo_jax.infer.sampler import Sampler
from caspo_jax.model import hf
from caspo_jax.model import tokenizer as tokenizer_lib
from caspo_jax.parallel import mesh as mesh_lib


def arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CaTConfig()
    parser.add_argument("--model", type=Path, required=True, help="HF model folder")
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: --model)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    parser.add_argument("--width", type=int, default=defaults.width, help="W: live paths kept per round")
    parser.add_argument("--branch", type=int, default=defaults.branch, help="B: next steps sampled per live path")
    parser.add_argument("--budget", type=int, default=defaults.budget, help="K: paths started, at most")
    parser.add_argument("--tau", type=float, default=defaults.tau, help="prune paths whose confidence falls below tau")
    parser.add_argument("--aggregation", choices=("mean", "min", "product"), default=defaults.path_aggregation)
    parser.add_argument("--answer", choices=("vote", "best"), default=defaults.answer)
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps)
    parser.add_argument("--step-tokens", type=int, default=defaults.step_tokens, help="most tokens of one step")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="token budget (0: none)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--step-delimiter", default="\\n\\n", help="string that ends a step (\\n escapes work)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None, help="param and compute dtype (default: the checkpoint's)")
    parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1: the remaining devices)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")


def run(args: argparse.Namespace) -> int:
    cfg = CaTConfig(
        width=args.width, branch=args.branch, budget=args.budget, tau=args.tau, path_aggregation=args.aggregation,
        answer=args.answer, max_steps=args.max_steps, step_tokens=args.step_tokens, max_tokens=args.max_tokens,
    )
    try:
        data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    except ValueError:
        raise ValueError(f"--mesh {args.mesh!r}: expected three integers data,fsdp,tensor") from None
    mesh = mesh_lib.make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor))
    config, params = hf.load(args.model, dtype=args.dtype, mesh=mesh)
    tokenizer = tokenizer_lib.load_tokenizer(args.tokenizer or args.model)
    ids = tokenizer_lib.encode(tokenizer, [tokenizer_lib.format_prompt(tokenizer, args.prompt, args.chat)])
    sampler = Sampler(config, params, tokenizer, mesh=mesh)
    result = cat.search(
        sampler, ids, cfg, temperature=args.temperature, top_p=args.top_p,
        step_delimiter=codecs.decode(args.step_delimiter, "unicode_escape"), seed=args.seed,
    )[0]
    print(cat_tree.render(result))
    if args.json is not None:
        args.json.write_text(json.dumps(dataclasses.asdict(result), indent=1), encoding="utf-8")
    return 0


COMMAND = (arguments, run)
