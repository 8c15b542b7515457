"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p.

Everything here is exact and avoids the two things XLA does slowly on CPU, sorting the vocabulary
(~65 ms for [8, 32000]) and drawing O(V) random numbers per step:
  - sampling inverts the CDF with one uniform number per row (`draw`);
  - top-p rejects instead of sorting (`nucleus_draw`): draw a token; keep it if the tokens more likely
    than it hold less than top_p of the mass, otherwise draw again among only those more likely
    tokens. Kept tokens come out with their renormalised probabilities, as with sort-and-cut, in ~1
    round when top_p is large;
  - argmax and top-k look at block maxima first, then inside the few blocks that matter.
The kept set is transformers' (temperature, then top-k, then top-p: the most likely tokens whose mass
first reaches top_p). Ties at a cut: top-k keeps exactly k tokens, top-p keeps every token tied with
the least likely one it keeps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# Tokens per block in the two-level searches. Searches by block maxima (argmax, top_k) are exact for
# any size; 32 keeps top_k's candidates few (k * 32): with it the confidence signals cost ~5% of a
# greedy decode step instead of ~15% with blocks of 128. Draws by block sums round by block, so
# SUM_BLOCK is fixed: changing it would change which token a seed draws.
MAX_BLOCK = 32
SUM_BLOCK = 128


def _blocks(x: Array, fill: float, size: int) -> Array:
    """[B, V] -> [B, ceil(V / size), size], padded with `fill`."""
    b, v = x.shape
    return jnp.pad(x, ((0, 0), (0, -v % size)), constant_values=fill).reshape(b, -1, size)


def _first_max(x: Array) -> Array:
    """[B, n] -> [B] int32 index of the first maximum (cheaper than XLA's CPU argmax)."""
    ids = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(x == jnp.max(x, axis=-1, keepdims=True), ids, x.shape[-1]), axis=-1)


def _take_blocks(blocks: Array, block: Array) -> Array:
    """blocks: [B, nb, size]; block: [B, n] -> [B, n, size], row b's blocks block[b].

    A row gather on the [B * nb, size] view: on CPU several times faster than the equivalent
    `take_along_axis`, which XLA lowers to a general gather."""
    b, nb, size = blocks.shape
    rows = jnp.arange(b, dtype=block.dtype)[:, None] * nb + block
    # mode="clip": the ids are in range; the default "fill" adds a select over the gathered values.
    return jnp.take(blocks.reshape(b * nb, size), rows.reshape(-1), axis=0, mode="clip").reshape(b, -1, size)


def _take_block(blocks: Array, block: Array) -> Array:
    """blocks: [B, nb, size]; block: [B] -> [B, size]."""
    return _take_blocks(blocks, block[:, None])[:, 0]


def pick(x: Array, ids: Array) -> Array:
    """x: [..., V]; ids: [...] int in [0, V) -> [...], x[..., ids] (`_take_blocks` with blocks of one)."""
    rows = x.reshape(ids.size, x.shape[-1], 1)
    return _take_blocks(rows, ids.reshape(-1, 1).astype(jnp.int32)).reshape(ids.shape)


def argmax(logits: Array) -> Array:
    """logits: [B, V] -> [B] int32, the first index of the maximum (as np.argmax)."""
    blocks = _blocks(logits, -jnp.inf, MAX_BLOCK)
    block = _first_max(jnp.max(blocks, axis=-1))
    return block * MAX_BLOCK + _first_max(_take_block(blocks, block))


def top_k(x: Array, k: int) -> tuple[Array, Array]:
    """Exact `lax.top_k` (values sorted, most likely first): x: [B, V] -> ([B, k], [B, k] int32).

    The k largest entries lie in the k blocks with the largest maxima, so only k * MAX_BLOCK candidates
    are ranked. Ties may come back in another order than lax.top_k's."""
    blocks = _blocks(x, -jnp.inf, MAX_BLOCK)
    if k * MAX_BLOCK >= x.shape[-1] or k > blocks.shape[1]:
        return jax.lax.top_k(x, k)
    _, best = jax.lax.top_k(jnp.max(blocks, axis=-1), k)  # [B, k] block numbers
    candidates = _take_blocks(blocks, best).reshape(x.shape[0], -1)
    values, where = jax.lax.top_k(candidates, k)
    ids = jnp.take_along_axis(best, where // MAX_BLOCK, axis=1) * MAX_BLOCK + where % MAX_BLOCK
    return values, ids


def draw(weights: Array, uniform: Array) -> Array:
    """Inverse-CDF draw. weights: [B, V] f32, unnormalised, >= 0, some > 0 per row; uniform: [B] in
    [0, 1) -> [B] int32, index i with probability weights[i] / sum(weights). Never picks a 0 weight."""
    blocks = _blocks(weights, 0.0, SUM_BLOCK)
    block_cdf = jnp.cumsum(jnp.sum(blocks, axis=-1), axis=-1)  # [B, nb]
    target = uniform * block_cdf[:, -1]
    # The block holding the target: the first whose cumulative mass exceeds it (clamped: rounding).
    block = jnp.minimum(jnp.sum(block_cdf <= target[:, None], axis=-1), block_cdf.shape[-1] - 1)
    before = jnp.where(block > 0, jnp.take_along_axis(block_cdf, jnp.maximum(block - 1, 0)[:, None], 1)[:, 0], 0.0)
    inside = _take_block(blocks, block)  # [B, SUM_BLOCK]
    cdf = before[:, None] + jnp.cumsum(inside, axis=-1)
    offsets = jnp.arange(SUM_BLOCK, dtype=jnp.int32)
    last_positive = jnp.max(jnp.where(inside > 0, offsets, 0), axis=-1)
    offset = jnp.minimum(jnp.sum(cdf <= target[:, None], axis=-1), last_positive)
    return block * SUM_BLOCK + offset


def _uniform(keys: Array, round_: Array | int = 0) -> Array:
    """keys: [B] typed PRNG keys -> [B] f32 in [0, 1), a fresh number for each round."""
    return jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, round_)))(keys)


def nucleus_draw(weights: Array, keys: Array, top_p: Array) -> Array:
    """A draw from weights: [B, V] (unnormalised, >= 0) restricted to the top-p set, by rejection.

    A drawn token t is in the set iff the tokens strictly more likely than t hold less than top_p of
    the mass. If not, every token as unlikely as t is outside the set too, so the next round draws
    only among tokens more likely than t: each round keeps the set, and the renormalised
    probabilities within it, and the most likely token is always accepted."""
    target = top_p * jnp.sum(weights, axis=-1)

    def another_round(state: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
        floor, token, accepted, round_ = state
        candidate = draw(jnp.where(weights > floor[:, None], weights, 0.0), _uniform(keys, round_))
        weight = pick(weights, candidate)[:, None]  # [B, 1]
        ahead = jnp.sum(jnp.where(weights > weight, weights, 0.0), axis=-1)
        ok = ~accepted & (ahead < target)
        token = jnp.where(ok, candidate, token)
        floor = jnp.where(accepted | ok, floor, weight[:, 0])
        return floor, token, accepted | ok, round_ + 1

    b = weights.shape[0]
    start = (jnp.full((b,), -1.0), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool), jnp.zeros((), jnp.int32))
    return jax.lax.while_loop(lambda state: ~jnp.all(state[2]), another_round, start)[1]


def choose(
    logits: Array,
    keys: Array,
    temperature: Array,
    top_p: Array,
    *,
    greedy: bool,
    top_k_size: int = 0,
    use_top_p: bool = False,
) -> Array:
    """The next token of each row. logits: [B, V] f32; keys: [B] PRNG keys -> [B] int32.

    greedy: argmax (the other arguments are ignored). Otherwise samples from softmax(logits /
    temperature) restricted to the top_k_size most likely tokens (if > 0) and to the top-p set (if
    use_top_p). temperature and top_p are traced scalars; greedy, top_k_size and use_top_p shape the graph.
    """
    if greedy:
        return argmax(logits)
    scaled = logits.astype(jnp.float32) / temperature
    if top_k_size > 0:
        values, ids = top_k(scaled, min(top_k_size, scaled.shape[-1]))  # sorted, most likely first
        weights = jnp.exp(values - values[:, :1])
        if use_top_p:
            mass_before = jnp.cumsum(weights, axis=-1) - weights
            weights = jnp.where(mass_before < top_p * jnp.sum(weights, axis=-1, keepdims=True), weights, 0.0)
        return jnp.take_along_axis(ids, draw(weights, _uniform(keys))[:, None], axis=-1)[:, 0]
    weights = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))
    if use_top_p:
        return nucleus_draw(weights, keys, top_p)
    return draw(weights, _uniform(keys))
