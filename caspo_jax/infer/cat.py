"""CaT (Confidence-aware Thought): a step-level tree search whose pruning and ranking run on device.

Each question owns R = W * B logical slots (questions batched, slots question-major:
slot q * R + s). A round extends every live slot by one step with one jitted `decoding.decode_loop`
(until_step_end) from the cache and logits the previous round left, so shared prefixes are never
prefilled again; the cache stays split by layer and the weights prepared for decoding from round to
round (both once per search, not once per round). The same call scores the step: step confidence is
the mean token confidence over the step's tokens, path confidence folds it in
(`confidence.path_update`: running mean, min or product). Then, still on device (`_select`): paths
that ended with EOS are finished, paths below tau are pruned (a question whose live paths are all
below tau keeps its best one: pruning thins a tree, it never abandons a question), the top W
remaining paths survive (`lax.top_k`) and each is repeated B times into the next round's slots. The
first child of a survivor continues its path, the others start new paths (adaptive branching: only
survivors whose last step confidence is below `branch_below` start new ones), and no more than
budget (K) paths per question are ever started; an optional token budget stops a question before a
round could exceed it.

Compaction. Slots are bookkeeping ([QR] arrays); the KV cache and logits live in a batch of `rows`
physical rows. Before each round `_regroup` (one jitted gather, `jnp.take` on the cache rows) packs
the live slots of every question in flight into the first rows of a batch whose size is the
smallest static bucket (QR, 3/4 QR, 9/16 QR, ... rounded to the mesh's batch shards) that holds them, so
pruned, finished and dropped paths stop costing compute and the batch shrinks with them. Each slot
keeps `source`, the row of the previous batch that holds its cache; each row knows its slot
(`slot_of_row`, QR for an empty padding row) and draws its random numbers from its slot id, so a
search with compaction samples exactly what it samples without. The round's outputs are scattered
back to slots for the record. The host reads one scalar per round (how many slots are live next:
it picks the next bucket, 0 ends the search) and the round records once at the end, from which
`cat_tree` builds each question's tree and its answer: a confidence-weighted vote over finished
paths, or the best one. (Admitting new questions into freed rows mid-search would need a cache whose
write slot is per row; `model/cache.py` shares one `end` per batch, so questions in flight are a
batch.)

    result = search(sampler, [prompt_ids], CaTConfig(width=2, branch=3, budget=10), temperature=0.7)[0]
    result.answer, [(p.status, p.confidence, p.steps) for p in result.paths]
"""

from __future__ import annotations

import functools
import math
import time
from typing import NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from caspo_jax.config import CaTConfig, ModelConfig
from caspo_jax.infer import cat_tree, confidence, decoding
from caspo_jax.infer import stops as stops_lib
from caspo_jax.infer.sampler import Sampler, SamplingConfig
from caspo_jax.model import cache as kv
from caspo_jax.parallel import mesh as mesh_lib

Array = jax.Array


class SearchShape(NamedTuple):
    """The static part of a search (shapes the compiled round)."""

    width: int  # W
    branch: int  # B
    aggregation: str  # 'mean' | 'min' | 'product'
    signal: str  # TokenSignals field used as token confidence
    step_tokens: int  # N, tokens per round

    @property
    def slots(self) -> int:
        return self.width * self.branch


@flax.struct.dataclass
class Slots:
    """Search state per slot (Q questions * R slots) and per question."""

    live: Array  # [QR] bool: the slot extends a path this round
    path: Array  # [QR] int32: the path the slot extends (numbered per question)
    parent: Array  # [QR] int32: the path it branched from (== path when it continues one, -1: the root)
    state: confidence.PathState  # [QR] running path confidence
    source: Array  # [QR] int32: the row of the current batch that holds the slot's cache and logits
    started: Array  # [Q] int32 paths started
    spent: Array  # [Q] int32 tokens generated
    round: Array  # [] int32


class Record(NamedTuple):
    """What one round did, per slot (kept on device until the search ends)."""

    live: Array  # [QR] bool
    path: Array  # [QR] int32
    parent: Array  # [QR] int32
    tokens: Array  # [QR, N] int32
    lengths: Array  # [QR] int32
    step_conf: Array  # [QR] f32
    path_conf: Array  # [QR] f32 after this step
    finished: Array  # [QR] bool: ended with EOS (and not pruned)
    pruned: Array  # [QR] bool: path confidence fell below tau


@flax.struct.dataclass
class Limits:
    tau: Array  # [] f32
    budget: Array  # [] int32 paths per question
    max_tokens: Array  # [] int32 tokens per question (0: none)
    branch_below: Array  # [] f32: only survivors whose last step confidence is below it branch (inf: all)


def init_slots(questions: int, real: int, shape: SearchShape, budget: int) -> Slots:
    """Round 0 (host arrays): the root of each of the `real` questions branches into min(B, K) paths."""
    first = min(shape.branch, budget)
    per_question = np.arange(shape.slots) < first
    live = np.concatenate([per_question & (q < real) for q in range(questions)])
    zeros = np.zeros(live.shape, np.int32)
    return Slots(
        live=live, path=np.tile(np.arange(shape.slots, dtype=np.int32), questions), parent=zeros - 1,
        state=confidence.PathState(zeros.astype(np.float32), zeros), source=np.arange(live.size, dtype=np.int32),
        started=np.full((questions,), first, np.int32), spent=np.zeros((questions,), np.int32),
        round=np.zeros((), np.int32),
    )


def bucket(live: int, total: int, multiple: int = 1, shrink: float = 0.75) -> int:
    """Batch rows for `live` live slots out of `total`: the smallest of total, total * shrink,
    total * shrink^2, ... (each rounded up to a multiple of `multiple`) that holds them; a short
    ladder of static sizes bounds recompiles and wastes at most 1/shrink - 1 of a batch."""
    best, raw = total, float(total)
    while raw >= 1:
        raw *= shrink
        size = math.ceil(math.ceil(raw) / multiple) * multiple
        if size < live:
            break
        best = min(best, size)
    return best


def _slot_ids(slot_of_row: Array, total: int) -> Array:
    """[rows] slot of each row, padding rows (== total) clamped to a valid index."""
    return jnp.minimum(slot_of_row, total - 1)


def _to_slots(x: Array, slot_of_row: Array, total: int) -> Array:
    """x: [rows, ...] per batch row -> [QR, ...] per slot (zeros for slots no row serves)."""
    if x.shape[0] == total:  # the uncompacted batch: row i serves slot i
        return x
    return jnp.zeros((total, *x.shape[1:]), x.dtype).at[slot_of_row].set(x, mode="drop")


@functools.partial(jax.jit, static_argnames=("rows", "mesh"))
def _regroup(
    cache: kv.LayerCache, logits: Array, slots: Slots, *, rows: int, mesh: Mesh | None = None
) -> tuple[kv.LayerCache, Array, Array]:
    """Packs the live slots into a batch of `rows` rows (rows == QR: slot i in row i) with one gather.
    cache, logits: [rows_before, ...] -> (cache, logits [rows, V], slot_of_row [rows] int32: the slot
    each row serves, QR for an empty row). Needs rows >= the number of live slots."""
    total = slots.live.shape[0]
    if rows == total:
        slot_of_row = jnp.arange(total, dtype=jnp.int32)
    else:
        order = jnp.argsort(~slots.live, stable=True)[:rows].astype(jnp.int32)  # live slots first, in order
        slot_of_row = jnp.where(slots.live[order], order, total)
    index = slots.source[_slot_ids(slot_of_row, total)]
    cache = decoding.constrain_layer_cache(kv.gather_layer_rows(cache, index), mesh)
    logits = decoding.constrain(jnp.take(logits, index, axis=0), ("batch", "vocab"), mesh)
    return cache, logits, decoding.constrain(slot_of_row, ("batch",), mesh)


@functools.partial(jax.jit, static_argnames=("mesh",))
def _split_cache(cache: kv.KVCache, *, mesh: Mesh | None = None) -> kv.LayerCache:
    return decoding.constrain_layer_cache(kv.split_layers(cache), mesh)


def _select(slots: Slots, record: Record, limits: Limits, shape: SearchShape) -> tuple[Slots, Array]:
    """Survivors -> next round's slots. Returns (slots, src [QR] int32: the slot each slot copies);
    `source` is left for the caller (it maps slots to batch rows)."""
    w, b, r = shape.width, shape.branch, shape.slots
    q = slots.started.shape[0]
    going = (slots.live & ~record.finished & ~record.pruned).reshape(q, r)
    score = jnp.where(going, record.path_conf.reshape(q, r), -jnp.inf)
    _, best = jax.lax.top_k(score, w)  # [Q, W] slot of each survivor, best first
    ok = jnp.take_along_axis(going, best, axis=1)  # [Q, W]; valid survivors come first
    step_conf = jnp.take_along_axis(record.step_conf.reshape(q, r), best, axis=1)
    branching = ok & (step_conf < limits.branch_below)  # [Q, W] survivors that may start new paths
    order = jnp.cumsum(branching, axis=1, dtype=jnp.int32) - 1  # index among the branching survivors
    count = jnp.sum(branching, axis=1, dtype=jnp.int32)  # [Q]
    j, c = jnp.arange(r) // b, jnp.arange(r) % b  # survivor and child of each slot
    rank = (c - 1)[None, :] * count[:, None] + order[:, j]  # new paths round-robin over branching survivors
    new = (c >= 1)[None, :] & branching[:, j] & (rank < (limits.budget - slots.started)[:, None])
    live = ok[:, j] & ((c == 0)[None, :] | new)  # [Q, R]
    spent = slots.spent + jnp.sum(jnp.where(record.live, record.lengths, 0).reshape(q, r), axis=1)
    affordable = spent + jnp.sum(live, axis=1) * shape.step_tokens <= limits.max_tokens
    live &= ((limits.max_tokens <= 0) | affordable)[:, None]
    src = (jnp.arange(q)[:, None] * r + best[:, j]).reshape(-1)
    parent_path = record.path[src]
    path = jnp.where((c == 0)[None, :], parent_path.reshape(q, r), slots.started[:, None] + rank)
    state = jax.tree.map(lambda x: x[src], slots.state)
    started = slots.started + jnp.sum(live & (c >= 1)[None, :], axis=1, dtype=jnp.int32)
    nxt = Slots(live.reshape(-1), path.reshape(-1), parent_path, state, slots.source, started, spent, slots.round + 1)
    return nxt, src


def _prune(live: Array, path_conf: Array, tau: Array, r: int) -> Array:
    """[QR] bool: live paths below tau, except a question's most confident live path when all of its
    live paths are below: pruning thins a question's tree, it never abandons the question."""
    below = (live & (path_conf < tau)).reshape(-1, r)
    score = jnp.where(live, path_conf, -jnp.inf).reshape(-1, r)
    best = jnp.arange(r)[None, :] == jnp.argmax(score, axis=1)[:, None]  # [Q, R]
    all_below = jnp.all(below | ~live.reshape(-1, r), axis=1, keepdims=True)
    return (below & ~(best & all_below)).reshape(-1)


@functools.partial(
    jax.jit, static_argnames=("model", "plan", "shape", "mesh"), donate_argnames=("cache", "logits")
)
def search_round(
    weights: decoding.DecodeWeights, cache: kv.LayerCache, logits: Array, slot_of_row: Array, slots: Slots,
    knobs: decoding.Knobs, limits: Limits, table: stops_lib.StopTable, *, model: ModelConfig, plan: decoding.DecodePlan,
    shape: SearchShape, mesh: Mesh | None = None,
) -> tuple[kv.LayerCache, Array, Slots, Record, Array]:
    """One round for every row of the batch (`_regroup`'s output): extend live slots by a step,
    score, prune, rank, branch. cache, logits [rows, V], slot_of_row [rows]: the batch; slots: [QR].
    Returns (cache and logits [rows, V] after each row's step, the next round's slots (their `source`
    indexes these rows), this round's record per slot, [] int32: slots live next round)."""
    total = slots.live.shape[0]
    ids = _slot_ids(slot_of_row, total)
    row_live = (slot_of_row < total) & slots.live[ids]
    eos = jax.nn.one_hot(knobs.eos[0], logits.shape[-1], dtype=bool)  # dead rows end at once
    logits = jnp.where(row_live[:, None] | (knobs.eos[0] < 0), logits, jnp.where(eos, 0.0, -jnp.inf))
    seed = jax.random.bits(jax.random.fold_in(jax.random.key(knobs.seed), slots.round), dtype=jnp.uint32)
    knobs = knobs.replace(seed=jax.lax.bitcast_convert_type(seed, jnp.int32), rows=ids)  # a slot's own stream
    out, cache, logits = decoding.decode_loop(weights, cache, logits, knobs, table, model=model, plan=plan, mesh=mesh)
    in_step = jnp.arange(plan.max_new_tokens)[None, :] < out.lengths[:, None]
    step_conf = _to_slots(confidence.span_mean(getattr(out.signals, shape.signal), in_step), slot_of_row, total)
    tokens, lengths, finish = (_to_slots(x, slot_of_row, total) for x in (out.tokens, out.lengths, out.finish))
    state = confidence.path_update(slots.state, step_conf, shape.aggregation, active=slots.live)
    pruned = _prune(slots.live, state.value, limits.tau, shape.slots)
    finished = slots.live & ~pruned & (finish == decoding.FINISH_EOS)
    record = Record(slots.live, slots.path, slots.parent, tokens, lengths, step_conf, state.value, finished, pruned)
    nxt, src = _select(slots.replace(state=state), record, limits, shape)
    row_of_slot = _to_slots(jnp.arange(slot_of_row.shape[0], dtype=jnp.int32), slot_of_row, total)
    nxt = nxt.replace(source=row_of_slot[src])
    return cache, logits, nxt, record, jnp.sum(nxt.live, dtype=jnp.int32)


def _placement(mesh: Mesh | None):
    """Explicit host -> device puts (no implicit transfer anywhere in a search): (split a [rows, ...]
    array over the batch axes, replicate an array)."""
    if mesh is None:
        return jax.device_put, jax.device_put
    return (
        lambda x: jax.device_put(x, mesh_lib.batch_sharding(mesh, np.shape(x))),
        lambda x: jax.device_put(x, mesh_lib.replicated(mesh)),
    )


def _fetch(x: Array) -> np.ndarray:
    """An explicit device -> host read of the whole array (gathered across processes if needed)."""
    return mesh_lib.to_host(x)


def search(
    sampler: Sampler, prompts: Sequence[Sequence[int]], cfg: CaTConfig, *, temperature: float = 0.7,
    top_p: float = 1.0, step_delimiter: str = "\n\n", signal: str = "entropy_conf", seed: int = 0,
    compact: bool = True,
) -> list[cat_tree.CaTResult]:
    """CaT for a batch of prompts (token ids) -> one CaTResult per prompt. compact=False keeps every
    slot in its own row every round (the same results, more compute)."""
    began = time.perf_counter()
    shape = SearchShape(cfg.width, cfg.branch, cfg.path_aggregation, signal, cfg.step_tokens)
    sampling = SamplingConfig(
        max_new_tokens=cfg.step_tokens, temperature=temperature, top_p=top_p, step_delimiter=step_delimiter,
        until_step_end=True,
    )
    r = shape.slots
    tokens, mask = sampler.left_pad(prompts, cfg.max_steps * cfg.step_tokens, r)
    total = tokens.shape[0] * r
    shards = 1 if sampler.mesh is None else sampler.mesh.shape["data"] * sampler.mesh.shape["fsdp"]
    batch, whole = _placement(sampler.mesh)
    cache, logits = decoding.prefill(
        sampler.params, batch(tokens), batch(mask), model=sampler.model, num_samples=r,
        cache_length=tokens.shape[1] + cfg.max_steps * cfg.step_tokens, mesh=sampler.mesh,
    )
    cache = _split_cache(cache, mesh=sampler.mesh)  # split by layer once, for every round
    weights = decoding.prepare_weights_jit(sampler.params, model=sampler.model)  # once, for every round
    knobs = decoding.Knobs(
        temperature=whole(np.float32(temperature or 1.0)), top_p=whole(np.float32(top_p)),
        eos=whole(np.asarray(sampler.eos_token_ids or (-1,), np.int32)), pad=whole(np.int32(sampler.pad_token_id)),
        seed=whole(np.int32(seed)), rows=batch(np.arange(total, dtype=np.int32)),
    )
    below = np.inf if cfg.branch_below is None else cfg.branch_below
    limits = jax.tree.map(
        whole, Limits(np.float32(cfg.tau), np.int32(cfg.budget), np.int32(cfg.max_tokens), np.float32(below))
    )
    slots = init_slots(tokens.shape[0], len(prompts), shape, cfg.budget)
    live = int(slots.live.sum())
    slots = jax.tree.map(lambda x: batch(x) if x.shape[:1] == (total,) else whole(x), slots)
    table = sampler.table(sampling.strings)
    records, batch_rows = [], []
    for _ in range(cfg.max_steps):
        rows = bucket(live, total, shards) if compact else total
        cache, logits, slot_of_row = _regroup(cache, logits, slots, rows=rows, mesh=sampler.mesh)
        cache, logits, slots, record, live_next = search_round(
            weights, cache, logits, slot_of_row, slots, knobs, limits, table,
            model=sampler.model, plan=sampling.plan(), shape=shape, mesh=sampler.mesh,
        )
        records.append(record)
        batch_rows.append(rows)
        live = int(_fetch(live_next))  # the one read per round
        if not live:
            break
    records = [Record(*(_fetch(x) for x in rec)) for rec in records]
    seconds = (time.perf_counter() - began) / len(prompts)
    row_steps = sum(n * int(max(rec.lengths[rec.live].max(initial=0), 1)) for n, rec in zip(batch_rows, records))
    results = []
    for q in range(len(prompts)):
        paths = cat_tree.build_paths(records, q * r, r, sampler.tokenizer)
        chosen = cat_tree.choose(paths, cfg.answer)
        answer = None if chosen is None else paths[chosen].answer
        spent = sum(p.own_tokens for p in paths)
        results.append(cat_tree.CaTResult(answer, chosen, paths, spent, seconds, len(records), batch_rows, row_steps))
    return results
