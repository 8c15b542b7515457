"""Regenerates tests/data/trl_golden.json: TRL's DPOTrainer on the tiny test model, two steps per loss.

Run with TRL installed (the `bench` extra: trl==1.16.0, torch==2.13.0 CPU), from the repository root:

    python tests/trl_golden.py

For each case it trains the tiny Qwen3 of tests/hf_models.py (char tokenizer) on 8 fixed pairs, batch 8,
fp32 on CPU, with precomputed reference log-probs, and records TRL's reference log-probs and the
metrics it logs at steps 1 and 2 (step 2 follows one AdamW update with clipping and a linear
schedule). tests/test_dpo.py replays the same cases through our trainer and compares.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from hf_models import save_hf_model, save_tokenizer  # noqa: E402

OUT = Path(__file__).parent / "data" / "trl_golden.json"
LEARNING_RATE = 1e-3
METRICS = (
    "loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
    "rewards/margins", "logps/chosen", "logps/rejected",
)  # fmt: skip


def pair_sets() -> dict[str, list[dict]]:
    """'varied': prompts and both completions of different lengths. 'equal_chosen': every chosen
    completion has the same length (TRL's SFT term is a token mean over the batch; ours a per-pair
    mean: the same number exactly when chosen lengths agree)."""
    varied, equal = [], []
    for i in range(8):
        a, b = 3 + i, 11 + 7 * i
        prompt = f"Q{i}: what is {a} + {b}?" + " think." * (i % 3) + "\n"
        varied.append(dict(prompt=prompt, chosen=f"{a} + {b} = {a + b}" + "!" * (i % 4), rejected=f"{a + b + i + 1}"))
        equal.append(dict(prompt=prompt, chosen=f"sum={a + b:03d}", rejected=f"{a} + {b} = {a * b}" + "?" * i))
    return {"varied": varied, "equal_chosen": equal}


# name, pair set, TRL DPOConfig options, our TrainConfig overrides
CASES = [
    ("sigmoid", "varied", dict(loss_type=["sigmoid"], beta=0.1), ["dpo.loss_type=sigmoid", "dpo.beta=0.1"]),
    ("robust", "varied", dict(loss_type=["robust"], beta=0.2, label_smoothing=0.1),
     ["dpo.loss_type=robust", "dpo.beta=0.2", "dpo.label_smoothing=0.1"]),
    ("ipo", "varied", dict(loss_type=["ipo"], beta=0.5), ["dpo.loss_type=ipo", "dpo.beta=0.5"]),
    ("hinge", "varied", dict(loss_type=["hinge"], beta=0.1), ["dpo.loss_type=hinge", "dpo.beta=0.1"]),
    ("rpo", "equal_chosen", dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], beta=0.1),
     ["dpo.loss_type=sigmoid", "dpo.beta=0.1", "dpo.rpo_alpha=0.5"]),
]  # fmt: skip
COMMON = [
    "batch_size=8", "max_steps=2", "log_every=1", f"optim.learning_rate={LEARNING_RATE}", "data.add_eos=true",
    "dpo.rpo_alpha=0",
]  # fmt: skip


def model_checksum(folder: Path) -> float:
    """Sum of |w| over every tensor, float64: detects a change in tests/hf_models.py's tiny model."""
    tensors = safetensors.numpy.load_file(folder / "model.safetensors")
    return float(sum(np.abs(t.astype(np.float64)).sum() for t in tensors.values()))


def make_model(folder: Path) -> Path:
    save_hf_model("qwen3", folder)
    save_tokenizer(folder, "char")
    return folder


def run_trl(folder: Path, pairs: list[dict], options: dict, work: Path) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(work), per_device_train_batch_size=8, max_steps=2, learning_rate=LEARNING_RATE,
        logging_steps=1, precompute_ref_log_probs=True, bf16=False, use_cpu=True, gradient_checkpointing=False,
        report_to=[], save_strategy="no", max_length=None, seed=0, disable_tqdm=True, **options,
    )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
    reference = {k: list(map(float, trainer.train_dataset[k])) for k in ("ref_chosen_logps", "ref_rejected_logps")}
    trainer.train()
    steps = [{k: float(entry[k]) for k in METRICS} for entry in trainer.state.log_history if "loss" in entry]
    return {**reference, "steps": steps}


def main() -> None:
    import trl

    torch.set_num_threads(1)
    sets = pair_sets()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_model(Path(tmp) / "model")
        cases = []
        for name, pair_set, options, ours in CASES:
            result = run_trl(folder, sets[pair_set], options, Path(tmp) / name)
            case = {"name": name, "pairs": pair_set, "trl_options": options, "overrides": COMMON + ours}
            cases.append({**case, **result})
            print(name, result["steps"][0]["loss"], result["steps"][1]["loss"])
        checksum = model_checksum(folder)
    golden = {
        "generated_by": "tests/trl_golden.py",
        "versions": {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "model": {"variant": "qwen3", "seed": 0, "tokenizer": "char", "checksum": checksum},
        "pair_sets": sets,
        "cases": cases,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
