"""The device side of generation: a jitted prefill, and a jitted `lax.while_loop` decode.

`prefill` runs the (left-padded) prompts once and repeats each row's cache for `num_samples`
continuations. `decode` then appends one token per row per iteration until every row has ended or
`max_new_tokens` is reached, all on device: the model step on a per-layer cache
(`cache.decode_layers_step`), sampling (`sampling.py`), confidence signals from the same
logits (`confidence.token_signals`, no second forward), stop strings and step ends (`stops.py`). The
cache is donated to `decode` and comes back extended by each row's tokens, so a caller that goes on
from where a step ended keeps it. `decode` splits the cache by layer and prepares the weights
(`prepare_weights`) on every call; a caller that decodes round after round (CaT) does both once and
calls `decode_loop` itself. The host side is `sampler.py`.

Conventions: B rows (prompt-major: row b * n + m is sample m of prompt b), N = max_new_tokens. A row
ends at EOS, at a stop string, or at the end of its current step when the step delimiter stops rows;
the token that ends it is part of its output and of `lengths`. Log-probs and signals describe the
model's own distribution (temperature 1, before top-k/top-p), which is what DPO and confidence need.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from caspo_jax.config import ModelConfig
from caspo_jax.infer import confidence, sampling
from caspo_jax.infer import stops as stops_lib
from caspo_jax.model import cache as kv
from caspo_jax.model import qwen
from caspo_jax.parallel import mesh as mesh_lib

Array = jax.Array

FINISH_LENGTH, FINISH_EOS, FINISH_STOP, FINISH_STEP, FINISH_LOW_CONFIDENCE = 0, 1, 2, 3, 4
FINISH_NAMES = ("length", "eos", "stop", "step", "low_confidence")


class DecodePlan(NamedTuple):
    """What shapes the compiled graph (static): built from a `sampler.SamplingConfig`."""

    max_new_tokens: int
    greedy: bool
    top_k: int
    use_top_p: bool
    signals: bool
    confidence_k: int
    num_stopping: int  # the first num_stopping searched strings end a row
    step_string: int  # index of the step delimiter among the searched strings, -1 without one
    confidence_window: int = 0  # > 0: stop a row when its last this-many topk_conf average < Knobs.floor


@flax.struct.dataclass
class Knobs:
    """The traced part: values that change from call to call without recompiling."""

    temperature: Array  # [] f32
    top_p: Array  # [] f32
    eos: Array  # [E] int32 token ids that end a row (-1 pads)
    pad: Array  # [] int32 written after a row's end
    seed: Array  # [] int32
    rows: Array  # [B] int32 global row ids: row r draws from fold_in(key(seed), r), whatever the batch
    floor: Array | None = None  # [B] f32 per-row stop threshold of plan.confidence_window (DeepConf online)


@flax.struct.dataclass
class SampleOutput:
    """Generated tokens and what decoding knew about them. B rows, N = max_new_tokens."""

    tokens: Array  # [B, N] int32, pad after each row's end
    lengths: Array  # [B] int32 generated tokens, the ending token (EOS, stop, step end) included
    logprobs: Array  # [B, N] f32 log p(token) under the model, 0 after the end
    signals: confidence.TokenSignals | None  # each [B, N] f32 (token_logprob None: see logprobs)
    step_ends: Array  # [B, N] bool: the token completes the step delimiter
    finish: Array  # [B] int32 FINISH_LENGTH | FINISH_EOS | FINISH_STOP | FINISH_STEP
    stop_index: Array  # [B] int32 index of the searched string that ended the row, or -1
    overhang: Array  # [B] int32 characters of the last token's piece after that string's end


def constrain(x: Array, axes: tuple[str | None, ...], mesh: Mesh | None) -> Array:
    if mesh is None:
        return x
    spec = mesh_lib.logical_to_spec(axes, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def constrain_cache(cache: kv.KVCache, mesh: Mesh | None) -> kv.KVCache:
    return cache.replace(
        keys=constrain(cache.keys, kv.KV_AXES, mesh),
        values=constrain(cache.values, kv.KV_AXES, mesh),
        valid=constrain(cache.valid, kv.VALID_AXES, mesh),
    )


def constrain_layer_cache(cache: kv.LayerCache, mesh: Mesh | None) -> kv.LayerCache:
    """`constrain_cache` for the per-layer form the decode loop carries."""
    def each(xs: tuple[Array, ...]) -> tuple[Array, ...]:
        return tuple(constrain(x, kv.LAYER_KV_AXES, mesh) for x in xs)

    return cache.replace(keys=each(cache.keys), values=each(cache.values), valid=constrain(cache.valid, kv.VALID_AXES, mesh))


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "cache_length", "mesh"))
def prefill(
    params: dict, tokens: Array, mask: Array, *, model: ModelConfig, num_samples: int, cache_length: int,
    mesh: Mesh | None = None,
) -> tuple[kv.KVCache, Array]:
    """Runs left-padded prompts once. tokens, mask: [P, T] -> (cache with P * num_samples rows of
    cache_length slots, next-token logits [P * num_samples, V] f32)."""
    cache = constrain_cache(kv.init_cache(model, tokens.shape[0], cache_length), mesh)
    hidden, cache = kv.extend(params, model, cache, tokens, mask)
    logits = kv.logits(params, model, hidden[:, -1])
    if num_samples > 1:
        cache, logits = kv.repeat_rows(cache, num_samples), jnp.repeat(logits, num_samples, axis=0)
    return constrain_cache(cache, mesh), constrain(logits, ("batch", "vocab"), mesh)


@flax.struct.dataclass
class _Carry:
    step: Array  # [] int32
    cache: kv.LayerCache
    logits: Array  # [B, V] next-token logits
    recent: Array | None  # [B, P] last generated characters (None without strings)
    done: Array  # [B] bool
    out: SampleOutput


def _record(column: Array, value: Array, i: Array) -> Array:
    return jax.lax.dynamic_update_slice_in_dim(column, value[:, None].astype(column.dtype), i, axis=1)


def _empty_output(b: int, plan: DecodePlan, mesh: Mesh | None) -> SampleOutput:
    def per_token(dtype) -> Array:
        return constrain(jnp.zeros((b, plan.max_new_tokens), dtype), ("batch", None), mesh)

    signals = None
    if plan.signals:
        signals = confidence.TokenSignals(*(per_token(jnp.float32) for _ in range(4)), token_logprob=None)
    per_row = jnp.zeros((b,), jnp.int32)
    return SampleOutput(
        tokens=per_token(jnp.int32), lengths=per_row, logprobs=per_token(jnp.float32), signals=signals,
        step_ends=per_token(bool), finish=per_row + FINISH_LENGTH, stop_index=per_row - 1, overhang=per_row,
    )


def _score(logits: Array, tokens: Array, plan: DecodePlan) -> tuple[Array, confidence.TokenSignals | None]:
    """log p(token) [B] and, when plan.signals, the other signals [B] each, from one pass over logits."""
    if not plan.signals:
        picked = sampling.pick(logits, tokens)
        return picked - jax.nn.logsumexp(logits, axis=-1), None
    signals = confidence.token_signals(logits, tokens, plan.confidence_k)
    return signals.token_logprob, signals._replace(token_logprob=None)


def _window_below(conf: Array, step: Array, window: int, floor: Array) -> Array:
    """[B] bool: the mean of conf [B, N] over the `window` tokens ending at `step` is below floor
    (False until a row has that many tokens)."""
    window = min(window, conf.shape[1])
    recent = jax.lax.dynamic_slice_in_dim(conf, jnp.maximum(step + 1 - window, 0), window, axis=1)
    return (step + 1 >= window) & (jnp.mean(recent, axis=1) < floor)


def _find_strings(
    table: stops_lib.StopTable, plan: DecodePlan, out: SampleOutput, recent: Array, token: Array, live: Array, step: Array
) -> tuple[SampleOutput, Array, Array]:
    """Advances the string search by one token. Returns (out with stops and step ends recorded,
    recent characters [B, P], rows stopped by this token [B] bool). live: rows that may still stop."""
    recent, end = stops_lib.advance(table, recent, token)  # end: [B, S]
    stopped = jnp.zeros_like(live)
    if plan.num_stopping:
        first = jnp.argmin(end[:, : plan.num_stopping], axis=-1).astype(jnp.int32)
        first_end = jnp.min(end[:, : plan.num_stopping], axis=-1)
        stopped = live & (first_end != stops_lib.NOT_FOUND)
        finish = jnp.where(first == plan.step_string, FINISH_STEP, FINISH_STOP)
        out = out.replace(
            finish=jnp.where(stopped, finish, out.finish),
            stop_index=jnp.where(stopped, first, out.stop_index),
            overhang=jnp.where(stopped, table.length[token] - 1 - first_end, out.overhang),
        )
    if plan.step_string >= 0:
        step_end = live & (end[:, plan.step_string] != stops_lib.NOT_FOUND)
        out = out.replace(step_ends=_record(out.step_ends, step_end, step))
    return out, recent, stopped


class DecodeWeights(NamedTuple):
    """The params as the decode loop reads them (`prepare_weights`): an explicit [D, V] LM head (a
    tied one transposed once, not once per token) and each layer's weights sliced and concatenated
    once (`cache.DecodeLayer`)."""

    params: dict  # the model's params plus "lm_head"
    layers: tuple[kv.DecodeLayer, ...]


def prepare_weights(params: dict, model: ModelConfig) -> DecodeWeights:
    """params -> `DecodeWeights`. A copy of the weights: callers that decode many times from the same
    params (CaT's rounds) prepare once with the jitted `prepare_weights_jit` and keep it."""
    params, _ = qwen.untie_head(params, model)
    return DecodeWeights(params, kv.decode_layers(params, model))


prepare_weights_jit = jax.jit(prepare_weights, static_argnames=("model",))


def forward_step(
    weights: DecodeWeights, cache: kv.LayerCache, token: Array, live: Array, *, model: ModelConfig
) -> tuple[Array, kv.LayerCache]:
    """The model on one token per row: token, live: [B] -> (next-token logits [B, V], the cache with
    the token appended; a row not live gets an invalid slot, as in `cache.decode_layers_step`)."""
    params, layers = weights
    hidden, cache = kv.decode_layers_step(params, layers, model, cache, token, live)
    return kv.logits(params, model.replace(tie_word_embeddings=False), hidden), cache  # an explicit lm_head


@functools.partial(jax.jit, static_argnames=("model", "plan", "mesh"), donate_argnames=("cache",))
def decode(
    params: dict, cache: kv.KVCache, logits: Array, knobs: Knobs, table: stops_lib.StopTable | None, *,
    model: ModelConfig, plan: DecodePlan, mesh: Mesh | None = None,
) -> tuple[SampleOutput, kv.KVCache, Array]:
    """Generates up to plan.max_new_tokens per row from a cache and its next-token logits [B, V].

    table: the strings searched for (stop strings, then the step delimiter), None when there are none.
    The cache needs plan.max_new_tokens free slots. Returns (output, cache extended by each row's
    tokens, next-token logits [B, V] after each row's last token): a later call goes on from there
    (give it another seed, or it replays the same random numbers). Callers that decode again and
    again from one cache keep it split by layer and call `decode_loop` (CaT does).
    """
    cache = constrain_layer_cache(kv.split_layers(cache), mesh)
    out, cache, logits = decode_loop(
        prepare_weights(params, model), cache, logits, knobs, table, model=model, plan=plan, mesh=mesh
    )
    return out, constrain_cache(kv.stack_layers(cache), mesh), logits


def decode_loop(
    weights: DecodeWeights, cache: kv.LayerCache, logits: Array, knobs: Knobs, table: stops_lib.StopTable | None,
    *, model: ModelConfig, plan: DecodePlan, mesh: Mesh | None = None,
) -> tuple[SampleOutput, kv.LayerCache, Array]:
    """`decode` on a cache split by layer and prepared weights (call it inside a jit)."""
    b = logits.shape[0]
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(knobs.seed), knobs.rows)

    def next_token(c: _Carry) -> _Carry:
        live = ~c.done
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, c.step)
        token = sampling.choose(
            c.logits, step_keys, knobs.temperature, knobs.top_p,
            greedy=plan.greedy, top_k_size=plan.top_k, use_top_p=plan.use_top_p,
        )
        token = jnp.where(live, token, knobs.pad)
        logprob, signals = _score(c.logits, token, plan)
        out = c.out.replace(
            tokens=_record(c.out.tokens, token, c.step),
            logprobs=_record(c.out.logprobs, jnp.where(live, logprob, 0.0), c.step),
            lengths=jnp.where(live, c.step + 1, c.out.lengths),
        )
        if signals is not None:
            out = out.replace(signals=jax.tree.map(
                lambda column, v: _record(column, jnp.where(live, v, 0.0), c.step), out.signals, signals
            ))
        ended = live & jnp.isin(token, knobs.eos)
        out = out.replace(finish=jnp.where(ended, FINISH_EOS, out.finish))
        if plan.confidence_window:
            low = live & ~ended & _window_below(out.signals.topk_conf, c.step, plan.confidence_window, knobs.floor)
            out = out.replace(finish=jnp.where(low, FINISH_LOW_CONFIDENCE, out.finish))
            ended |= low
        recent = c.recent
        if table is not None:
            out, recent, stopped = _find_strings(table, plan, out, c.recent, token, live & ~ended, c.step)
            ended |= stopped
        next_logits, cache = forward_step(weights, c.cache, token, live, model=model)
        cache = constrain_layer_cache(cache, mesh)
        # Rows that have ended keep the logits after their last token, for a decode that goes on.
        logits = jnp.where(live[:, None], next_logits, c.logits)
        logits = constrain(logits, ("batch", "vocab"), mesh)
        return _Carry(c.step + 1, cache, logits, recent, c.done | ended, out)

    def running(c: _Carry) -> Array:
        return (c.step < plan.max_new_tokens) & ~jnp.all(c.done)

    recent = None if table is None else constrain(stops_lib.start(table, b), ("batch", None), mesh)
    start = _Carry(jnp.zeros((), jnp.int32), cache, logits, recent, jnp.zeros((b,), bool), _empty_output(b, plan, mesh))
    final = jax.lax.while_loop(running, next_token, start)
    return final.out, final.cache, final.logits
