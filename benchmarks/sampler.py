"""Sampler throughput: our jitted KV-cache decode against transformers' `generate` on torch CPU.

One run, one HF model folder, one batch: 8 prompts x 32 tokens, 128 new tokens, EOS disabled on both
sides so every row generates all 128. Measured: tokens/s greedy, and sampling with scores
(temperature 0.7, top-p 0.95; transformers with output_scores=True, return_dict_in_generate=True; ours
returns log-probs and confidence signals), and the cost of our confidence signals (greedy with
signals against greedy with log-probs only). It also times three floors: the least any greedy
decoder must do, our model's forward and an argmax per token in one jitted loop (`forward_floor`;
transformers' time over it caps the greedy speedup of any sampler on this forward); the model's
matmuls alone (`matmul_floor`, a cap for any forward on XLA's default CPU kernels); and the signals'
own arithmetic on [8, V] logits with no model (`confidence_arithmetic_share`: what they add, over a
step without them). Every measurement runs once per round, the rounds interleaving ours and
transformers' so that other load on the machine hits both alike; speedups and the overhead are
medians of within-round ratios (with their range), times are medians after a warm-up, and compile
time is reported apart.

    python benchmarks/sampler.py [--model DIR] [--repeats 5]

Prints one JSON line with `speedup_vs_transformers` {greedy, sampling} and `confidence_overhead`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

BATCH, PROMPT_TOKENS, NEW_TOKENS = 8, 32, 128
TEMPERATURE, TOP_P = 0.7, 0.95


def wall_and_cpu_seconds(run) -> tuple[float, float]:
    """One call of run(): (wall seconds, CPU seconds of this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def forward_floor(config, params, prompts):
    """A run of the bare minimum of greedy decoding: prefill, then NEW_TOKENS steps of the model's
    one-token forward (`decoding.forward_step`, the sampler's own) and an argmax, in one jitted loop; no
    log-probs, signals, stopping or outputs."""
    import functools

    import jax
    import jax.numpy as jnp

    from caspo_jax.infer import decoding, sampling
    from caspo_jax.model import cache as kv

    @functools.partial(jax.jit, static_argnames=("model",))
    def greedy_tokens(weights, cache, token, *, model):
        live = jnp.ones(token.shape, bool)

        def step(_, carry):
            cache, token = carry
            logits, cache = decoding.forward_step(weights, cache, token, live, model=model)
            return cache, sampling.argmax(logits)

        return jax.lax.fori_loop(0, NEW_TOKENS, step, (cache, token))[1]

    tokens, mask = jnp.asarray(prompts), jnp.ones(prompts.shape, bool)
    weights = decoding.prepare_weights_jit(params, model=config)

    def run():
        cache, logits = decoding.prefill(
            params, tokens, mask, model=config, num_samples=1, cache_length=PROMPT_TOKENS + NEW_TOKENS
        )
        greedy_tokens(weights, kv.split_layers(cache), sampling.argmax(logits), model=config).block_until_ready()
    return run


def matmul_floor(config, params):
    """A run of the model's matmuls alone, batch BATCH, NEW_TOKENS steps in one jitted loop: every
    layer's q/k/v, o, gate/up and down projections and the LM head, chained as in the model but with
    no attention, norms or sampling: the least a forward takes on XLA's default CPU kernels."""
    import functools

    import jax
    import jax.numpy as jnp

    from caspo_jax.infer import decoding

    @functools.partial(jax.jit, static_argnames=("model",))
    def chain(weights, x, *, model):
        params, layers = weights
        heads_width = model.num_heads * model.head_dim

        def step(_, x):
            for layer in layers:
                x = x + (x @ layer.qkv)[:, :heads_width] @ layer.o
                gate, up = jnp.split(x @ layer.gate_up, 2, axis=-1)
                x = x + (gate * up) @ layer.down
            logits = x @ params["lm_head"]
            return x + logits[:, : x.shape[1]] * 1e-6  # the head's output feeds the next step
        return jax.lax.fori_loop(0, NEW_TOKENS, step, x)

    weights = decoding.prepare_weights_jit(params, model=config)
    x = jnp.ones((BATCH, config.hidden_size), jnp.dtype(config.dtype))
    return lambda: chain(weights, x, model=config).block_until_ready()


def signal_arithmetic(vocab: int):
    """Runs of the signals' own arithmetic, apart from any model: NEW_TOKENS steps over [BATCH, vocab]
    logits in one jitted loop, once computing what greedy without signals computes (argmax, log-prob)
    and once what it computes with them. Their difference over a step without signals is the share
    of the confidence overhead that is arithmetic, whatever the rest of the step does."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from caspo_jax.infer import confidence, sampling

    def loop(score):
        @jax.jit
        def steps(logits):
            def step(_, carry):
                logits, total = carry
                token = sampling.argmax(logits)
                value = jnp.sum(score(logits, token))
                return logits.at[0, 0].add(value * 1e-30), total + value  # each step depends on the last
            return jax.lax.fori_loop(0, NEW_TOKENS, step, (logits, jnp.zeros(())))[1]
        return steps

    def log_prob(logits, token):
        return sampling.pick(logits, token) - jax.nn.logsumexp(logits, axis=-1)

    def signals(logits, token):
        return jnp.stack(confidence.token_signals(logits, token))

    logits = jnp.asarray(np.random.RandomState(0).normal(0, 3, (BATCH, vocab)).astype(np.float32))
    runs = {"log_prob": loop(log_prob), "signals": loop(signals)}
    return {name: (lambda steps=steps: steps(logits).block_until_ready()) for name, steps in runs.items()}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(repeats=5)
    args = p.parse_args()
    model_dir = args.model or common.default_model_dir()
    load_before = os.getloadavg()[0]  # other work on the machine skews both sides, torch's the most

    import jax
    import numpy as np
    import torch
    import transformers

    from caspo_jax.infer.sampler import Sampler, SamplingConfig
    from caspo_jax.model import hf

    config, params = hf.load(model_dir)
    prompts = np.random.RandomState(0).randint(3, config.vocab_size, (BATCH, PROMPT_TOKENS))
    sampler = Sampler(config, params, eos_token_ids=())
    greedy = SamplingConfig(max_new_tokens=NEW_TOKENS, step_delimiter=None)
    sampled = SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=TEMPERATURE, top_p=TOP_P, step_delimiter=None)
    bare = SamplingConfig(max_new_tokens=NEW_TOKENS, step_delimiter=None, signals=False)

    def ours(sampling: SamplingConfig):
        def run():
            out = sampler.generate(prompts.tolist(), sampling)
            assert (out.lengths == NEW_TOKENS).all()
        return run

    def first_call_seconds(run) -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    compile_s = {name: first_call_seconds(ours(s)) for name, s in (("greedy", greedy), ("sampling", sampled))}
    first_call_seconds(ours(bare))

    torch_model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    no_eos = dict(eos_token_id=None, pad_token_id=config.pad_token_id or 0)
    ids = torch.as_tensor(prompts)

    def theirs(**kwargs):
        def run():
            with torch.no_grad():
                out = torch_model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, **no_eos, **kwargs
                )
            sequences = out.sequences if hasattr(out, "sequences") else out
            assert sequences.shape[1] == PROMPT_TOKENS + NEW_TOKENS
        return run

    runs = {
        "ours_greedy": ours(greedy),
        "transformers_greedy": theirs(do_sample=False),
        "ours_greedy_no_signals": ours(bare),
        "forward_floor": forward_floor(config, params, prompts),
        "matmul_floor": matmul_floor(config, params),
        **{f"arithmetic_{name}": run for name, run in signal_arithmetic(config.vocab_size).items()},
        "ours_sampling": ours(sampled),
        "transformers_sampling": theirs(
            do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, output_scores=True, return_dict_in_generate=True
        ),
    }
    # Rounds interleave every measurement, so load from other work on the machine hits both sides
    # alike; ratios are taken within a round, then their median (and range) over rounds.
    # CPU seconds (all threads of this process) are reported too: they move less with other load.
    for run in runs.values():
        run()  # warm-up
    rounds, cpu_rounds = [], []
    for _ in range(args.repeats):
        rounds.append({})
        cpu_rounds.append({})
        for name, run in runs.items():
            rounds[-1][name], cpu_rounds[-1][name] = wall_and_cpu_seconds(run)
    times = {name: statistics.median(r[name] for r in rounds) for name in runs}

    def ratios(num: str, den: str, of: list[dict] = rounds) -> list[float]:
        return [r[num] / r[den] for r in of]

    speedups = {kind: ratios(f"transformers_{kind}", f"ours_{kind}") for kind in ("greedy", "sampling")}
    cpu_speedups = {kind: ratios(f"transformers_{kind}", f"ours_{kind}", cpu_rounds) for kind in ("greedy", "sampling")}
    # The overhead is a few percent of a run: measure it in more back-to-back pairs, alternating
    # which goes first, and take the median ratio.
    overheads = ratios("ours_greedy", "ours_greedy_no_signals")
    for i in range(max(args.repeats, 7)):
        pair = (runs["ours_greedy"], runs["ours_greedy_no_signals"])[:: 1 if i % 2 else -1]
        seconds = [common.median_seconds(run, 1, warmup=0) for run in pair][:: 1 if i % 2 else -1]
        overheads.append(seconds[0] / seconds[1])
    for name in compile_s:  # first call minus a steady-state call: tracing and XLA compilation
        compile_s[name] = round(compile_s[name] - times[f"ours_{name}"], 3)

    tokens_per_s = {name: BATCH * NEW_TOKENS / t for name, t in times.items() if name.startswith(("ours", "transformers"))}
    arithmetic = [(r["arithmetic_signals"] - r["arithmetic_log_prob"]) / r["ours_greedy_no_signals"] for r in rounds]
    floor_speedups = ratios("transformers_greedy", "forward_floor")
    matmul_speedups = ratios("transformers_greedy", "matmul_floor")
    common.emit({
        "benchmark": "sampler",
        "model": str(model_dir),
        "device": jax.devices()[0].device_kind,
        "torch_threads": torch.get_num_threads(),
        "batch": BATCH, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
        "sampling": {"temperature": TEMPERATURE, "top_p": TOP_P},
        "tokens_per_s": {k: round(v, 1) for k, v in tokens_per_s.items()},
        "speedup_vs_transformers": {kind: round(statistics.median(r), 2) for kind, r in speedups.items()},
        "speedup_range": {kind: [round(min(r), 2), round(max(r), 2)] for kind, r in speedups.items()},
        "speedup_in_cpu_seconds": {kind: round(statistics.median(r), 2) for kind, r in cpu_speedups.items()},
        "ms_per_token_step": {k: round(v / NEW_TOKENS * 1e3, 3) for k, v in times.items()},
        "greedy_speedup_cap_at_forward_floor": round(statistics.median(floor_speedups), 2),
        "greedy_speedup_cap_at_matmul_floor": round(statistics.median(matmul_speedups), 2),
        "confidence_overhead": round(statistics.median(overheads) - 1, 4),
        "confidence_overhead_range": [round(min(overheads) - 1, 4), round(max(overheads) - 1, 4)],
        "confidence_arithmetic_share": round(statistics.median(arithmetic), 4),
        "compile_s": compile_s,
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    })


if __name__ == "__main__":
    main()
