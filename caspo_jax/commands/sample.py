"""`caspo-jax sample`: continuations of the prompts in a JSONL file, with per-step confidence.

Input: one JSON object per line with a string `prompt` (or the key given by --field). Output: one JSON
line per sample, prompt-major: {"index", "sample", "prompt", "text", "tokens", "finish", "logprob",
"confidence", "steps": [{"text", "confidence"}]}, where confidence is the mean token entropy
confidence 1 - H / log V over the sample's tokens, or over a step's tokens (steps split as
`caspo.steps` splits them). The output appears only when complete (written aside, then renamed).
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from caspo_jax.caspo import steps as steps_lib
from caspo_jax.config import MeshConfig
from caspo_jax.data import jsonl
from caspo_jax.infer import decoding
from caspo_jax.infer.sampler import Sampler, SampleOutput, SamplingConfig
from caspo_jax.model import hf
from caspo_jax.model import tokenizer as tokenizer_lib
from caspo_jax.parallel import mesh as mesh_lib


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="HF model folder")
    parser.add_argument("--prompts", type=Path, required=True, help="JSONL file, one object per line")
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    parser.add_argument("--field", default="prompt", help="key of the prompt text (default: prompt)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: --model)")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (one shared prefill)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable; \\n escapes work)")
    parser.add_argument("--step-delimiter", default="\\n\\n", help="string that ends a step (\\n escapes work)")
    parser.add_argument("--until-step-end", action="store_true", help="stop each sample at the end of its first step")
    parser.add_argument("--step-splitter", default="blank_line", help="how steps are split for confidence")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per device call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None, help="param and compute dtype (default: the checkpoint's)")
    parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1: the remaining devices)")


def _unescape(text: str) -> str:
    return codecs.decode(text, "unicode_escape")


def read_prompts(path: Path, field: str) -> list[str]:
    """The prompt texts of a JSONL file; errors name the file and line."""
    prompts = []
    for where, record in jsonl.records(path):
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise ValueError(f"{where}: expected an object with a string {field!r}")
        if not record[field]:
            raise ValueError(f"{where}: the prompt is empty")
        prompts.append(record[field])
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def _mesh(spec: str) -> MeshConfig:
    try:
        data, fsdp, tensor = (int(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"--mesh {spec!r}: expected three integers data,fsdp,tensor") from None
    return MeshConfig(data, fsdp, tensor)


def records(sampler: Sampler, out: SampleOutput, prompts: list[str], first: int, n: int, splitter: str) -> list[dict]:
    """One output record per row of `out` (rows prompt-major, prompts numbered from `first`)."""
    texts = sampler.texts(out)
    rows = []
    for r, text in enumerate(texts):
        length = int(out.lengths[r])
        tokens = out.tokens[r, :length]
        confidence = out.signals.entropy_conf[r, :length]
        steps = steps_lib.split_steps(text, splitter)
        token_texts = [sampler.pieces[t] for t in tokens]
        if steps and "".join(token_texts) == text:
            spans = steps_lib.token_spans(steps, token_texts)
            by_step = [(s.text, c) for s, c in zip(steps, steps_lib.step_confidences(confidence, spans))]
        else:  # no steps, or text the pieces do not add up to: one step
            by_step = [(text.strip(), np.mean(confidence))]
        rows.append({
            "index": first + r // n,
            "sample": r % n,
            "prompt": prompts[r // n],
            "text": text,
            "tokens": tokens.tolist(),
            "finish": decoding.FINISH_NAMES[int(out.finish[r])],
            "logprob": round(float(out.logprobs[r, :length].sum()), 5),
            "confidence": round(float(np.mean(confidence)), 5),
            "steps": [{"text": t, "confidence": round(float(c), 5)} for t, c in by_step],
        })
    return rows


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    texts = read_prompts(args.prompts, args.field)
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        stop_strings=tuple(_unescape(s) for s in args.stop), step_delimiter=_unescape(args.step_delimiter),
        until_step_end=args.until_step_end,
    )
    mesh = mesh_lib.make_mesh(_mesh(args.mesh))
    config, params = hf.load(args.model, dtype=args.dtype, mesh=mesh)
    tokenizer = tokenizer_lib.load_tokenizer(args.tokenizer or args.model)
    ids = tokenizer_lib.encode(tokenizer, [tokenizer_lib.format_prompt(tokenizer, t, args.chat) for t in texts])
    for number, row in enumerate(ids):
        if not row:
            raise ValueError(f"{args.prompts}: prompt {number + 1} encodes to no tokens")
    sampler = Sampler(config, params, tokenizer, mesh=mesh)
    writer = jax.process_index() == 0
    tmp = args.out.with_name(f".{args.out.name}.tmp-{os.getpid()}")
    if writer:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp if writer else os.devnull, "w", encoding="utf-8") as f:
            bar = tqdm(total=len(ids), unit="prompt", desc="sample", disable=not writer)
            for first in range(0, len(ids), args.batch_size):
                batch = ids[first : first + args.batch_size]
                out = sampler.generate(batch, sampling, num_samples=args.n, seed=args.seed, first_row=first * args.n)
                for record in records(sampler, out, texts[first:], first, args.n, args.step_splitter):
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                bar.update(len(batch))
            bar.close()
        if writer:
            os.replace(tmp, args.out)
    finally:
        if writer and tmp.exists():
            tmp.unlink()
    if writer:
        print(f"wrote {len(ids) * args.n} samples of {len(ids)} prompts to {args.out}")
    return 0


SAMPLE = (arguments, run)
