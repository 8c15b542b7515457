"""The train state and the one jitted train step (gradient accumulation, clipping, AdamW).

`TrainState` (step, params, opt_state) is sharded like the params (optimizer moments follow their
param; counters are replicated) and donated to the step. A step takes the whole global batch,
[B, ...] over ('data', 'fsdp'), splits it into `grad_accum` micro-batches, sums their gradients under
a `lax.scan` and applies one optimizer update. Each micro-batch takes every `grad_accum`-th row, so
every device keeps its own rows and no data moves.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from caspo_jax.config import ModelConfig, TrainConfig
from caspo_jax.model import qwen
from caspo_jax.parallel import mesh as mesh_lib
from caspo_jax.train import dpo, optim

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    step: Array  # [] int32: optimizer steps taken
    params: dict
    opt_state: optax.OptState

    def as_dict(self) -> dict:
        """The checkpointed form (a plain pytree)."""
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}


def state_shardings(config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Shardings of every state leaf: params by logical axes, optimizer moments like their param."""
    params = mesh_lib.shardings_for(qwen.param_logical_axes(config), qwen.param_shapes(config), mesh)
    abstract_opt = jax.eval_shape(tx.init, qwen.param_shapes(config))
    replicated = mesh_lib.replicated(mesh)
    opt = optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_opt, params, transform_non_params=lambda _: replicated
    )
    return TrainState(step=replicated, params=params, opt_state=opt)


def _fresh(params: dict, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def abstract_state(config: ModelConfig, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs of a state, carrying `shardings`: what a checkpoint restore fills in."""
    shapes = jax.eval_shape(functools.partial(_fresh, tx=tx), qwen.param_shapes(config))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def init_state(params: dict, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """A fresh state around `params` (already placed on `shardings.params`)."""
    return jax.jit(functools.partial(_fresh, tx=tx), out_shardings=shardings)(params)


def _micro_batches(batch: dpo.Batch, accum: int, mesh: Mesh) -> dpo.Batch:
    """[B, ...] -> [accum, B / accum, ...]; micro-batch m holds rows m, m + accum, m + 2 accum, ..."""

    def split(x: Array) -> Array:
        x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
        spec = mesh_lib.logical_to_spec((None, "batch") + (None,) * (x.ndim - 2), x.shape, mesh)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(split, dict(batch))


def batch_sharding(config: TrainConfig, mesh: Mesh) -> NamedSharding:
    """Every batch array's sharding: rows over ('data', 'fsdp'), the rest replicated."""
    return mesh_lib.batch_sharding(mesh, (config.batch_size,))


def to_device(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, Array]:
    """This process's rows of a global batch -> global arrays (every process passes its own rows)."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def make_train_step(
    model_config: ModelConfig,
    config: TrainConfig,
    tx: optax.GradientTransformation,
    total_steps: int,
    shardings: TrainState,
    mesh: Mesh,
) -> Callable:
    """The jitted step: (state, batch[, ref_params]) -> (state, metrics), state donated.

    Metrics ([] f32, replicated): the objective's (TRL names for DPO), grad_norm (before clipping) and
    learning_rate (the one this step used). ref_params is passed only with dpo.reference='live'.
    """
    model_config = model_config.replace(dtype=config.compute_dtype, remat=config.remat)
    lr = optim.schedule(config.optim, total_steps)
    live = config.mode == "dpo" and config.dpo.reference == "live"

    def objective(params, batch, total, ref_params):
        if config.mode == "sft":
            return dpo.sft_objective(params, model_config, batch, total, config.logits_chunk)
        ref = None
        if live:
            ref = dpo.sequence_logps(ref_params, model_config, batch, config.logits_chunk)
            ref = jax.tree.map(jax.lax.stop_gradient, ref)
        return dpo.dpo_objective(params, model_config, batch, total, config.dpo, config.logits_chunk, ref)

    def step(state: TrainState, batch: dpo.Batch, ref_params: dict | None = None):
        total = jnp.maximum(dpo.normaliser(batch, config.mode), 1e-9)
        grad_fn = jax.value_and_grad(objective, has_aux=True)

        def accumulate(grads, micro):
            (_, metrics), g = grad_fn(state.params, micro, total, ref_params)
            return jax.tree.map(jnp.add, grads, g), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, metrics = jax.lax.scan(accumulate, zeros, _micro_batches(batch, config.grad_accum, mesh))
        metrics = jax.tree.map(functools.partial(jnp.sum, axis=0), metrics)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics |= {"grad_norm": optax.tree.norm(grads), "learning_rate": jnp.asarray(lr(state.step), jnp.float32)}
        return TrainState(state.step + 1, params, opt_state), metrics

    in_shardings = (shardings, batch_sharding(config, mesh)) + ((shardings.params,) if live else ())
    return jax.jit(
        step, in_shardings=in_shardings, out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0
    )


def make_reference_fn(model_config: ModelConfig, config: TrainConfig, mesh: Mesh, params_sharding: dict) -> Callable:
    """Jitted (params, batch) -> (chosen [B], rejected [B]) summed completion log-probs, for precomputing."""
    model_config = model_config.replace(dtype=config.compute_dtype)

    def reference(params: dict, batch: dpo.Batch) -> tuple[Array, Array]:
        logps = dpo.sequence_logps(params, model_config, batch, config.logits_chunk)
        return logps.chosen, logps.rejected

    in_shardings = (params_sharding, batch_sharding(config, mesh))
    return jax.jit(reference, in_shardings=in_shardings, out_shardings=mesh_lib.replicated(mesh))
