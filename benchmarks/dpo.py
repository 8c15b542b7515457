"""DPO optimizer steps per second and peak memory: caspo-jax against TRL's DPOTrainer (torch, CPU).

Two workloads at batch 8 on the same HF model folder and the same pairs (one jsonl both sides read):
  generic     prompt 64 tokens, chosen and rejected 64 tokens each
  step_pairs  CASPO's step pairs: a 256-token prefix, chosen and rejected steps of 32 tokens
Both sides precompute reference log-probs (TRL: `precompute_ref_log_probs=True`), train in fp32 with
AdamW (lr 1e-6, linear decay, clipping at 1.0) on the sigmoid loss, without activation checkpointing,
and are timed per optimizer step after warm-up (median). Each side runs in its own subprocess, whose
peak RSS (getrusage maxrss) is its peak memory. Text is random words of a word-level tokenizer over the
model's vocabulary ("w17 w2093 ... </s>"), so every side sees exactly the same token ids.

    python benchmarks/dpo.py [--model DIR] [--steps 5] [--warmup 2]

Prints one JSON line with `speedup_vs_trl_generic`, `speedup_vs_trl_step_pairs` (our pairs/s over
TRL's) and each side's pairs/s and peak RSS. TRL (the `bench` extra) is imported only here.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

BATCH = 8
WORKLOADS = {"generic": (64, 64), "step_pairs": (256, 32)}  # prompt tokens, tokens per completion
LEARNING_RATE = 1e-6


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer whose ids are the model's: '<pad>' 0, '<s>' 1, '</s>' 2, 'w{i}' i."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def write_pairs(path: Path, vocab_size: int, prompt_len: int, completion_len: int, n: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)

    def words(k: int) -> str:
        return " ".join(f"w{i}" for i in rng.integers(3, vocab_size, k))

    rows = [
        {"prompt": words(prompt_len), "chosen": f" {words(completion_len - 1)} </s>",
         "rejected": f" {words(completion_len - 1)} </s>"}
        for _ in range(n)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_ours(model: Path, pairs: Path, vocab_size: int, warmup: int, steps: int) -> list[float]:
    import jax
    import numpy as np

    from caspo_jax.config import DataConfig, DPOConfig, OptimConfig, TrainConfig
    from caspo_jax.data import pairs_io, pipeline
    from caspo_jax.model import hf
    from caspo_jax.parallel import mesh as mesh_lib
    from caspo_jax.train import optim
    from caspo_jax.train import state as state_lib

    config = TrainConfig(
        batch_size=BATCH, dpo=DPOConfig(rpo_alpha=0.0), data=DataConfig(max_length=4096),
        optim=OptimConfig(learning_rate=LEARNING_RATE),
    )  # fmt: skip
    examples, _ = pipeline.tokenize(pairs_io.read_records(pairs), word_tokenizer(vocab_size), config.data)
    mesh = mesh_lib.make_mesh(config.mesh)
    model_config, params = hf.load(model, dtype="float32", mesh=mesh)
    total = warmup + steps
    tx = optim.optimizer(config.optim, total)
    shardings = state_lib.state_shardings(model_config, tx, mesh)
    sharding = state_lib.batch_sharding(config, mesh)
    reference = state_lib.make_reference_fn(model_config, config, mesh, shardings.params)
    packed = [pipeline.pack(examples[i : i + BATCH], BATCH) for i in range(0, len(examples), BATCH)]
    ref = [jax.device_get(reference(params, state_lib.to_device(batch, sharding))) for batch in packed]
    examples = pipeline.with_reference(examples, *(np.concatenate(side) for side in zip(*ref)))
    batches = pipeline.iterator(pipeline.dataset(examples, BATCH, shuffle=False, seed=0, epochs=None))
    state = state_lib.init_state(params, tx, shardings)
    step = state_lib.make_train_step(model_config, config, tx, total, shardings, mesh)
    times = []
    for _ in range(total):
        start = time.perf_counter()
        state, metrics = step(state, state_lib.to_device(next(batches), sharding))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def run_trl(model: Path, pairs: Path, vocab_size: int, warmup: int, steps: int) -> list[float]:
    import datasets
    import torch
    import transformers
    from trl import DPOConfig, DPOTrainer

    times: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, per_device_train_batch_size=BATCH, max_steps=warmup + steps, learning_rate=LEARNING_RATE,
            precompute_ref_log_probs=True, bf16=False, gradient_checkpointing=False, use_cpu=True, max_length=None,
            logging_steps=10**6, save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip
        policy = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        trainer = DPOTrainer(
            model=policy, args=args, processing_class=word_tokenizer(vocab_size),
            train_dataset=datasets.Dataset.from_json(str(pairs)), callbacks=[Clock()],
        )  # fmt: skip
        trainer.train()
    return times[warmup:]


def child(side: str, model: Path, pairs: Path, vocab_size: int, warmup: int, steps: int) -> None:
    times = (run_ours if side == "ours" else run_trl)(model, pairs, vocab_size, warmup, steps)
    seconds = statistics.median(times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds_per_step": seconds, "pairs_per_s": BATCH / seconds, "peak_rss_mb": peak_mb}))


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per side and workload")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, allocator)")
    p.add_argument("--child", nargs=3, metavar=("SIDE", "PAIRS", "VOCAB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    model = args.model or common.default_model_dir()
    if args.child:
        side, pairs, vocab = args.child
        return child(side, model, Path(pairs), int(vocab), args.warmup, args.steps)

    vocab_size = json.loads((model / "config.json").read_text())["vocab_size"]
    result = {"model": str(model), "batch": BATCH, "timed_steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (prompt_len, completion_len) in WORKLOADS.items():
            n = BATCH * (args.warmup + args.steps)
            pairs = write_pairs(Path(tmp) / f"{name}.jsonl", vocab_size, prompt_len, completion_len, n)
            for side in ("ours", "trl"):
                command = [sys.executable, __file__, "--model", str(model), "--steps", str(args.steps),
                           "--warmup", str(args.warmup), "--child", side, str(pairs), str(vocab_size)]  # fmt: skip
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                measured = json.loads(out.strip().splitlines()[-1])
                result |= {f"{side}_{key}_{name}": round(value, 4) for key, value in measured.items()}
            speedup = result[f"ours_pairs_per_s_{name}"] / result[f"trl_pairs_per_s_{name}"]
            result[f"speedup_vs_trl_{name}"] = round(speedup, 2)
    common.emit(result)


if __name__ == "__main__":
    main()
