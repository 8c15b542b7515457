"""Memory and throughput planning: what a config needs per device on a slice, before paying for it.

`plan(model, train, mesh, chip, chips)` returns a `Plan`: bytes per device of params, gradients and
optimizer state (exact: every param's shard under `mesh.LOGICAL_RULES`, the optimizer's own state
tree), an activation estimate for one micro-batch of the jitted DPO step, the KV cache of sampling,
and the tokens/s per chip that a stated MFU (training) or memory-bandwidth utilisation (decoding)
implies. What the trainer actually holds:

  params        train.param_dtype, sharded by LOGICAL_RULES (embed over 'fsdp'; heads, mlp, vocab
                over 'tensor'); no separate fp32 master copy
  gradients     the param dtype, like the params; twice when grad_accum > 1 (scan carry + micro-batch)
  optimizer     optax AdamW (mu, nu) in the param dtype, sharded like the params
  reference     dpo.reference 'live' keeps a second copy of the params; 'precomputed' none
  activations   an estimate for one micro-batch row set of `seq_len` tokens per row (see
                `activation_bytes`); remat keeps one [T, D] input per layer plus one layer's internals

Model FLOPs per trained token follow PaLM (Chowdhery et al. 2022, app. B): 6 N + 12 L H Q T, with N
the matmul params (embedding lookup excluded, LM head included), H heads of size Q, T tokens per row.
Chip numbers are vendors' dense bf16 peaks and HBM per chip; see `CHIPS`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types

import jax
import numpy as np
import optax

from caspo_jax.config import MeshConfig, ModelConfig, TrainConfig
from caspo_jax.model import qwen
from caspo_jax.parallel import mesh as mesh_lib
from caspo_jax.train import optim

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_tflops: float  # dense bf16 matmul, per chip
    hbm_gib: float  # memory per chip
    hbm_gb_s: float  # memory bandwidth per chip, GB/s
    cores_per_chip: int  # TPU slice names count TensorCores on v4/v5p ("v5p-64" = 32 chips), chips elsewhere


CHIPS = {
    "v4": Chip("TPU v4", 275.0, 32.0, 1228.0, 2),
    "v5e": Chip("TPU v5e", 197.0, 16.0, 819.0, 1),
    "v5p": Chip("TPU v5p", 459.0, 95.0, 2765.0, 2),
    "v6e": Chip("TPU v6e (Trillium)", 918.0, 32.0, 1640.0, 1),
    "h100": Chip("NVIDIA H100 SXM", 989.0, 80.0 * 1e9 / GIB, 3350.0, 1),
    "h200": Chip("NVIDIA H200 SXM", 989.0, 141.0 * 1e9 / GIB, 4800.0, 1),
}
SLICES = ("v4-8", "v4-32", "v5e-8", "v5e-16", "v5e-64", "v5p-8", "v5p-32", "v5p-64", "v6e-8", "v6e-16", "h100-8", "h200-8")


def parse_slice(name: str) -> tuple[Chip, int]:
    """'v5p-64' -> (v5p, 32 chips); 'v5e-16' -> (v5e, 16); 'h100-8' -> (h100, 8)."""
    match = re.fullmatch(r"(v4|v5e|v5p|v6e|h100|h200)-(\d+)", name.lower().replace("litepod", "v5e"))
    if not match:
        raise ValueError(f"slice {name!r}: expected <chip>-<size> with chip one of {sorted(CHIPS)}, e.g. v5p-64")
    chip = CHIPS[match[1]]
    size = int(match[2])
    if size % chip.cores_per_chip:
        raise ValueError(f"slice {name!r}: {match[1]} slice sizes count {chip.cores_per_chip} cores per chip")
    return chip, size // chip.cores_per_chip


def _per_device_elements(config: ModelConfig, mesh_sizes: dict[str, int]) -> dict:
    """Elements each device holds of every param, from the same rules the trainer shards with."""
    fake_mesh = types.SimpleNamespace(shape=mesh_sizes)
    shapes, axes = qwen.param_shapes(config), qwen.param_logical_axes(config)

    def one(logical: tuple, leaf: jax.ShapeDtypeStruct) -> int:
        spec = mesh_lib.logical_to_spec(logical, leaf.shape, fake_mesh)
        split = 1
        for entry in spec:
            for axis in (entry,) if isinstance(entry, str) else (entry or ()):
                split *= mesh_sizes[axis]
        return math.prod(leaf.shape) // split

    return jax.tree.map(one, axes, shapes, is_leaf=lambda x: isinstance(x, tuple))


def matmul_params(config: ModelConfig) -> int:
    """Params that take part in matmuls per token: all but the embedding lookup (a tied head counts)."""
    embedding = config.vocab_size * config.hidden_size
    return config.num_params - (0 if config.tie_word_embeddings else embedding)


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Model FLOPs of one trained token (forward + backward), PaLM's formula."""
    attention = 12 * config.num_layers * config.num_heads * config.head_dim * seq_len
    return 6.0 * matmul_params(config) + attention


def activation_bytes(config: ModelConfig, rows: float, seq_len: int, tensor: int, remat: bool, chunk: int) -> float:
    """Estimated activation bytes per device for `rows` rows of seq_len tokens in one micro-batch.

    Per token and layer the backward keeps ~7 D-wide tensors (residuals, norms, projections; not split
    over 'tensor'), 3 query- and 6 key/value-sized ones and 4 MLP-wide ones (gate, up, silu, product;
    split over 'tensor') in the compute dtype, and for every head and key position ~10 bytes of
    attention (scores and probabilities in fp32, a compute-dtype copy). remat keeps each layer's input
    and rebuilds one layer at a time. The LM head runs `chunk` positions per row at a time: two fp32
    [rows, chunk, V / tensor] buffers (logits and their gradient). Checked against XLA's own
    `memory_analysis()` of the compiled step (tests/test_plan.py).
    """
    width = 2 if config.dtype in ("bfloat16", "float16") else 4
    d, h = config.hidden_size, config.head_dim
    narrow = 7 * d * width
    wide = (3 * config.num_heads * h + 6 * config.num_kv_heads * h + 4 * config.intermediate_size) * width / tensor
    attention = (8 + width) * config.num_heads * seq_len / tensor
    per_token_layer = narrow + wide + attention
    tokens = rows * seq_len
    if remat:
        layers = tokens * (config.num_layers * d * width + per_token_layer)
    else:
        layers = tokens * config.num_layers * per_token_layer
    head = 2 * rows * min(chunk, seq_len) * config.vocab_size / tensor * 4
    return layers + head + 4 * tokens * d * 4  # + embeddings, final norm and gathered hidden states (fp32)


@dataclasses.dataclass(frozen=True)
class Plan:
    model: str
    slice: str
    chip: str
    chips: int
    mesh: tuple[int, int, int]  # (data, fsdp, tensor)
    num_params: int
    param_bytes: float  # per device, as are all *_bytes below
    grad_bytes: float
    optimizer_bytes: float
    reference_bytes: float
    activation_bytes: float
    total_bytes: float
    hbm_bytes: float
    fits: bool
    micro_batch_rows_per_device: float
    seq_len: int
    train_flops_per_token: float
    mfu: float
    train_tokens_per_s_per_chip: float
    step_seconds: float
    kv_bytes_per_token: float  # per device, one sequence
    decode_rows_per_device: int
    decode_tokens_per_s_per_chip: float
    mbu: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan(
    model: ModelConfig, train: TrainConfig, chip: Chip, chips: int, *, name: str = "model", slice_name: str = "",
    mfu: float = 0.4, mbu: float = 0.5, seq_len: int | None = None, decode_len: int = 2048,
    mesh: MeshConfig | None = None,
) -> Plan:
    """The per-device budget of `train` on `chips` chips (one JAX device per chip) of `chip`."""
    if not (0 < mfu <= 1 and 0 < mbu <= 1):
        raise ValueError(f"mfu and mbu must be in (0, 1], got mfu={mfu}, mbu={mbu}")
    data, fsdp, tensor = mesh_lib.mesh_shape(mesh or train.mesh, chips)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    model = model.replace(param_dtype=train.param_dtype, dtype=train.compute_dtype, remat=train.remat)
    elements = _per_device_elements(model, sizes)
    param_width = np.dtype(jax.numpy.dtype(model.param_dtype)).itemsize
    param_bytes = float(sum(jax.tree.leaves(elements))) * param_width

    tx = optim.optimizer(train.optim, 1)
    opt_state = jax.eval_shape(tx.init, qwen.param_shapes(model))
    per_leaf = optax.tree_map_params(
        tx, lambda leaf, n: n * leaf.dtype.itemsize, opt_state, elements, transform_non_params=lambda _: 0
    )
    optimizer_bytes = float(sum(jax.tree.leaves(per_leaf)))
    grad_bytes = param_bytes * (2 if train.grad_accum > 1 else 1)
    reference_bytes = param_bytes if train.mode == "dpo" and train.dpo.reference == "live" else 0.0

    seq_len = seq_len or train.data.max_length
    rows = train.batch_size / train.grad_accum / (data * fsdp)
    act = activation_bytes(model, max(rows, 1.0), seq_len, tensor, train.remat, train.logits_chunk)
    total = param_bytes + grad_bytes + optimizer_bytes + reference_bytes + act
    hbm = chip.hbm_gib * GIB

    flops = train_flops_per_token(model, seq_len)
    tokens_per_s = mfu * chip.peak_tflops * 1e12 / flops
    step_seconds = train.batch_size * seq_len / (tokens_per_s * chips)

    # Decoding: each step reads this device's params and its rows' KV cache once (bandwidth bound).
    kv_width = param_width
    kv_split = tensor if model.num_kv_heads % tensor == 0 else 1  # as logical_to_spec shards 'kv_heads'
    kv_per_token = 2 * model.num_layers * model.num_kv_heads * model.head_dim * kv_width / kv_split
    free = max(hbm * 0.9 - param_bytes, 0.0)
    decode_rows = int(free // (kv_per_token * decode_len))
    read = param_bytes + decode_rows * kv_per_token * decode_len / 2  # rows are half full on average
    decode_tokens = mbu * chip.hbm_gb_s * 1e9 * decode_rows / read if decode_rows else 0.0
    return Plan(
        model=name, slice=slice_name, chip=chip.name, chips=chips, mesh=(data, fsdp, tensor),
        num_params=model.num_params, param_bytes=param_bytes, grad_bytes=grad_bytes, optimizer_bytes=optimizer_bytes,
        reference_bytes=reference_bytes, activation_bytes=act, total_bytes=total, hbm_bytes=hbm,
        fits=total <= 0.9 * hbm, micro_batch_rows_per_device=rows, seq_len=seq_len, train_flops_per_token=flops,
        mfu=mfu, train_tokens_per_s_per_chip=tokens_per_s, step_seconds=step_seconds,
        kv_bytes_per_token=kv_per_token, decode_rows_per_device=decode_rows,
        decode_tokens_per_s_per_chip=decode_tokens, mbu=mbu,
    )  # fmt: skip
