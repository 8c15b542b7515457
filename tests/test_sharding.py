"""Sharded forward on 8 fake CPU devices equals the single-device forward, for several mesh shapes."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from caspo_jax.config import MeshConfig
from caspo_jax.model import hf, qwen
from caspo_jax.parallel import mesh as mesh_lib
from hf_models import VOCAB, save_hf_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_hf_model("qwen3", tmp_path_factory.mktemp("shard") / "m")


@pytest.fixture(scope="module")
def reference(folder):
    config, params = hf.load(folder)
    tokens = np.random.RandomState(0).randint(0, VOCAB, (8, 16))
    mask = np.ones_like(tokens)
    mask[3, :4] = 0
    return tokens, mask, np.asarray(qwen.forward(params, config, jnp.asarray(tokens), jnp.asarray(mask)))


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1), (1, 1, 8), (8, 1, 1)])
def test_sharded_forward_equals_single_device(folder, reference, shape):
    assert jax.device_count() == 8
    mesh = mesh_lib.make_mesh(MeshConfig(*shape))
    config, params = hf.load(folder, mesh=mesh)
    tokens, mask, expected = reference
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    batch = mesh_lib.batch_sharding(mesh, tokens.shape)
    forward = jax.jit(
        qwen.forward,
        static_argnums=1,
        in_shardings=(param_shardings, batch, batch),
        out_shardings=mesh_lib.batch_sharding(mesh, expected.shape),
    )
    logits = forward(params, config, jax.device_put(tokens, batch), jax.device_put(mask, batch))
    logits.block_until_ready()
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)


def test_params_are_really_sharded(folder):
    mesh = mesh_lib.make_mesh(MeshConfig(2, 2, 2))
    _, params = hf.load(folder, mesh=mesh)
    gate = params["layers"]["mlp"]["gate_proj"]["kernel"]  # [L, D, F]: ('layers', 'embed', 'mlp')
    assert gate.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    assert gate.addressable_shards[0].data.shape == (gate.shape[0], gate.shape[1] // 2, gate.shape[2] // 2)


def test_axes_that_do_not_divide_are_replicated():
    mesh = mesh_lib.make_mesh(MeshConfig(1, 1, 8))
    # 2 KV heads cannot be split 8 ways: replicated; an MLP of 128 can.
    assert mesh_lib.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == PartitionSpec(None, None, None)
    assert mesh_lib.logical_to_spec(("embed", "mlp"), (64, 128), mesh) == PartitionSpec(None, "tensor")
    mesh = mesh_lib.make_mesh(MeshConfig(2, 4, 1))
    # batch over ('data', 'fsdp') keeps what divides: 4 rows -> only 'data' (2) then 'fsdp' would need 8.
    assert mesh_lib.logical_to_spec(("batch", None), (4, 3), mesh) == PartitionSpec("data", None)
    assert mesh_lib.logical_to_spec(("batch", None), (16, 3), mesh) == PartitionSpec(("data", "fsdp"), None)


def test_mesh_shapes():
    assert mesh_lib.mesh_shape(MeshConfig(2, -1, 2), 8) == (2, 2, 2)
    assert mesh_lib.make_mesh(MeshConfig(1, -1, 1)).shape == {"data": 1, "fsdp": 8, "tensor": 1}
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        mesh_lib.mesh_shape(MeshConfig(3, -1, 1), 8)
    with pytest.raises(ValueError, match="needs 4 devices"):
        mesh_lib.mesh_shape(MeshConfig(2, 2, 1), 8)
    with pytest.raises(ValueError, match="at most one axis"):
        mesh_lib.mesh_shape(MeshConfig(-1, -1, 1), 8)
