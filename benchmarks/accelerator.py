"""DPO-step MFU and sampler tokens/s on one accelerator, against transformers `generate` on the same card.

The model is a Qwen2.5-0.5B-shaped decoder (24 layers, d=896, GQA 14/2, vocab 151936, tied
embeddings) with random weights, written once as an HF folder by our own `hf.save`; `--model DIR`
takes any HF folder instead. Two measurements, in one process, on the first device:

  dpo      one jitted DPO step (sigmoid loss, precomputed reference, AdamW, fp32 master weights,
           bf16 compute, each layer rematerialised: without a fused attention kernel the [B, H, T, T]
           scores of every layer would not fit) on packed rows [prompt | chosen | rejected]. MFU = model FLOPs per step /
           step time / the card's peak dense bf16 FLOP/s. Model FLOPs are those the step needs:
           3 x forward, forward = 2 x (non-embedding params) per token + attention (4 T^2 H d_head
           per layer and row, the full square XLA computes) + the LM head on completion positions.
  sampler  greedy decode, bf16, every row generating all new tokens (EOS off), our sampler with
           confidence signals against transformers `generate` (torch, bf16, its default attention)
           on the same weights and prompts; when torch sees no GPU the peer is skipped.

    python benchmarks/accelerator.py [--model DIR] [--preset qwen2.5-0.5b|tiny] [--repeats 3]

Prints one JSON line with `dpo.mfu`, `dpo.tokens_per_s`, `sampler.tokens_per_s` and
`sampler.speedup_vs_transformers`. `--preset tiny` is a CPU smoke run of the script itself.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

# Peak dense bf16 FLOP/s per chip (vendor figures, no sparsity), keyed by a substring of device_kind.
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6": 918e12,
}  # fmt: skip

PRESETS = {
    "qwen2.5-0.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
        num_heads=14, num_kv_heads=2, head_dim=64, qkv_bias=True, rope_theta=1e6, tie_word_embeddings=True,
    ),
    "tiny": dict(
        model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, qkv_bias=True, rope_theta=1e6, tie_word_embeddings=True,
    ),
}  # fmt: skip
# (batch, prompt, completion) for the DPO step; (batch, prompt, new tokens) for the sampler.
SHAPES = {"qwen2.5-0.5b": ((16, 512, 256), (32, 128, 256)), "tiny": ((4, 32, 16), (4, 16, 16))}


def build_model(preset: str):
    import jax

    from caspo_jax.config import ModelConfig
    from caspo_jax.model import hf, qwen

    path = common.CACHE / f"{preset}-random"
    if not (path / "config.json").exists():
        config = ModelConfig(**PRESETS[preset], bos_token_id=1, eos_token_ids=(2,), pad_token_id=0)
        hf.save(path, config, qwen.init_params(config, jax.random.key(0)), dtype="bfloat16")
    return path


def peak_flops(device_kind: str) -> float | None:
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k.lower() in device_kind.lower()), None)


def forward_flops(config, tokens: int, row_length: int, rows: int, head_positions: int) -> float:
    """Forward FLOPs: matmuls of the non-embedding weights, attention scores/values, the LM head."""
    d, h, k, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    per_layer = d * h * hd * 2 + d * k * hd * 2 + 3 * d * config.intermediate_size
    dense = 2 * per_layer * config.num_layers * tokens
    attention = 4 * row_length**2 * h * hd * config.num_layers * rows
    head = 2 * d * config.vocab_size * head_positions
    return float(dense + attention + head)


def dpo_step(model_dir, shape, repeats: int) -> dict:
    import jax
    import numpy as np

    from caspo_jax.config import DataConfig, DPOConfig, OptimConfig, TrainConfig
    from caspo_jax.data import pipeline
    from caspo_jax.model import hf
    from caspo_jax.parallel import mesh as mesh_lib
    from caspo_jax.train import optim
    from caspo_jax.train import state as state_lib

    batch, prompt, completion = shape
    config = TrainConfig(
        batch_size=batch, compute_dtype="bfloat16", remat=True, logits_chunk=256, dpo=DPOConfig(rpo_alpha=0.0),
        data=DataConfig(max_length=prompt + 2 * completion), optim=OptimConfig(learning_rate=1e-6),
    )  # fmt: skip
    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
    model_config, params = hf.load(model_dir, dtype="float32", mesh=mesh)
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(3, model_config.vocab_size, n, dtype=np.int32)  # noqa: E731
    examples = [
        {"prompt": ids(prompt), "chosen": ids(completion), "rejected": ids(completion), "weight": np.float32(1),
         "ref_chosen_logps": np.float32(-100), "ref_rejected_logps": np.float32(-100)}
        for _ in range(batch)
    ]  # fmt: skip
    packed = pipeline.pack(examples, batch)
    total_steps = repeats + 2
    tx = optim.optimizer(config.optim, total_steps)
    shardings = state_lib.state_shardings(model_config, tx, mesh)
    state = state_lib.init_state(params, tx, shardings)
    del params
    step = state_lib.make_train_step(model_config, config, tx, total_steps, shardings, mesh)
    device_batch = state_lib.to_device(packed, state_lib.batch_sharding(config, mesh))
    start = time.perf_counter()
    state, metrics = step(state, device_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(total_steps - 1):
        start = time.perf_counter()
        state, metrics = step(state, device_batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    rows, row_length = packed["tokens"].shape
    head_positions = int(packed["gather"].shape[0] * packed["gather"].shape[1])
    flops = 3 * forward_flops(model_config, rows * row_length, row_length, rows, head_positions)
    peak = peak_flops(jax.devices()[0].device_kind)
    return {
        "batch": batch, "row_tokens": row_length, "completion_positions": head_positions // rows,
        "seconds_per_step": round(seconds, 4), "compile_s": round(compile_s - seconds, 2),
        "tokens_per_s": round(rows * row_length / seconds, 1), "pairs_per_s": round(batch / seconds, 2),
        "model_tflops_per_s": round(flops / seconds / 1e12, 2),
        "peak_bf16_tflops": peak and peak / 1e12, "mfu": peak and round(flops / seconds / peak, 4),
        "loss": round(float(metrics["loss"]), 4),
    }  # fmt: skip


def sampler(model_dir, shape, repeats: int) -> dict:
    import jax
    import numpy as np

    from caspo_jax.infer.sampler import Sampler, SamplingConfig
    from caspo_jax.model import hf

    batch, prompt, new = shape
    config, params = hf.load(model_dir, dtype="bfloat16")
    prompts = np.random.RandomState(0).randint(3, config.vocab_size, (batch, prompt))
    ours = Sampler(config, params, eos_token_ids=())
    greedy = SamplingConfig(max_new_tokens=new, step_delimiter=None)

    def run_ours():
        assert (ours.generate(prompts.tolist(), greedy).lengths == new).all()

    start = time.perf_counter()
    run_ours()
    compile_s = time.perf_counter() - start
    seconds = {"ours": common.median_seconds(run_ours, repeats, warmup=0)}
    out = {"batch": batch, "prompt_tokens": prompt, "new_tokens": new, "compile_s": round(compile_s - seconds["ours"], 2)}
    ours = params = None  # free the JAX copy before transformers loads its own
    jax.clear_caches()

    import torch
    import transformers

    if torch.cuda.is_available():
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
        ids = torch.as_tensor(prompts).cuda()

        def run_theirs():
            with torch.no_grad():
                result = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                    eos_token_id=None, pad_token_id=0,
                )  # fmt: skip
            torch.cuda.synchronize()
            assert result.shape[1] == prompt + new

        seconds["transformers"] = common.median_seconds(run_theirs, repeats)
        out["torch_attention"] = model.config._attn_implementation
    tokens_per_s = {name: batch * new / s for name, s in seconds.items()}
    out["tokens_per_s"] = {k: round(v, 1) for k, v in tokens_per_s.items()}
    if "transformers" in tokens_per_s:
        out["speedup_vs_transformers"] = round(tokens_per_s["ours"] / tokens_per_s["transformers"], 2)
    return out


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="qwen2.5-0.5b", help="model shape when no --model")
    args = p.parse_args()
    import jax

    model_dir = args.model or build_model(args.preset)
    dpo_shape, sampler_shape = SHAPES["tiny" if args.preset == "tiny" else "qwen2.5-0.5b"]
    common.emit({
        "benchmark": "accelerator", "model": str(model_dir), "device": jax.devices()[0].device_kind,
        "jax": jax.__version__, "dpo": dpo_step(model_dir, dpo_shape, args.repeats),
        "sampler": sampler(model_dir, sampler_shape, args.repeats),
    })  # fmt: skip


if __name__ == "__main__":
    main()
