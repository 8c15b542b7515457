"""Hugging Face checkpoints <-> (ModelConfig, params), driven by one key table for both directions.

`load` reads config.json (hub form: `rope_theta`/`torch_dtype`; transformers-5 form:
`rope_parameters`/`dtype`) and single or sharded safetensors, and places every tensor straight onto
its target sharding (each device reads only its slice of the memory-mapped file). `save` writes a
folder that `transformers.AutoModelForCausalLM.from_pretrained` and vLLM accept, into a temporary
folder renamed into place, so a failed save never leaves a half-written target.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

import jax
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from caspo_jax.config import DTYPES, ModelConfig
from caspo_jax.model.hf_config import config_to_hf, read_config
from caspo_jax.model import qwen, tensor_files
from caspo_jax.parallel import mesh as mesh_lib

log = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)

# Our param path -> (HF tensor name, layout). '{i}' is the layer index of a scanned ('layers') param.
# Layouts: 'same' (identical shape), 'flat' (ours [N, H] is HF [N*H]), 't1'/'t2' (HF [out, in] is
# our kernel transposed, its first one or two dims forming HF's `in`).
KEY_TABLE: dict[tuple[str, ...], tuple[str, str]] = {
    ("embed", "embedding"): ("model.embed_tokens.weight", "same"),
    ("final_norm", "scale"): ("model.norm.weight", "same"),
    ("lm_head",): ("lm_head.weight", "t1"),
    ("layers", "input_norm", "scale"): ("model.layers.{i}.input_layernorm.weight", "same"),
    ("layers", "post_attn_norm", "scale"): ("model.layers.{i}.post_attention_layernorm.weight", "same"),
    ("layers", "attn", "q_proj", "kernel"): ("model.layers.{i}.self_attn.q_proj.weight", "t1"),
    ("layers", "attn", "k_proj", "kernel"): ("model.layers.{i}.self_attn.k_proj.weight", "t1"),
    ("layers", "attn", "v_proj", "kernel"): ("model.layers.{i}.self_attn.v_proj.weight", "t1"),
    ("layers", "attn", "o_proj", "kernel"): ("model.layers.{i}.self_attn.o_proj.weight", "t2"),
    ("layers", "attn", "q_proj", "bias"): ("model.layers.{i}.self_attn.q_proj.bias", "flat"),
    ("layers", "attn", "k_proj", "bias"): ("model.layers.{i}.self_attn.k_proj.bias", "flat"),
    ("layers", "attn", "v_proj", "bias"): ("model.layers.{i}.self_attn.v_proj.bias", "flat"),
    ("layers", "attn", "o_proj", "bias"): ("model.layers.{i}.self_attn.o_proj.bias", "same"),
    ("layers", "attn", "q_norm", "scale"): ("model.layers.{i}.self_attn.q_norm.weight", "same"),
    ("layers", "attn", "k_norm", "scale"): ("model.layers.{i}.self_attn.k_norm.weight", "same"),
    ("layers", "mlp", "gate_proj", "kernel"): ("model.layers.{i}.mlp.gate_proj.weight", "t1"),
    ("layers", "mlp", "up_proj", "kernel"): ("model.layers.{i}.mlp.up_proj.weight", "t1"),
    ("layers", "mlp", "down_proj", "kernel"): ("model.layers.{i}.mlp.down_proj.weight", "t1"),
    ("layers", "mlp", "gate_proj", "bias"): ("model.layers.{i}.mlp.gate_proj.bias", "same"),
    ("layers", "mlp", "up_proj", "bias"): ("model.layers.{i}.mlp.up_proj.bias", "same"),
    ("layers", "mlp", "down_proj", "bias"): ("model.layers.{i}.mlp.down_proj.bias", "same"),
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_shape(layout: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape for our (per-layer) param shape."""
    if layout == "same":
        return ours
    if layout == "flat":
        return (math.prod(ours),)
    split = int(layout[1])
    return (math.prod(ours[split:]), math.prod(ours[:split]))


def to_ours(layout: str, x: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    return x.reshape(ours) if layout in ("same", "flat") else x.T.reshape(ours)


def to_hf(layout: str, x: np.ndarray) -> np.ndarray:
    if layout in ("same", "flat"):
        return x.reshape(hf_shape(layout, x.shape))
    return x.reshape(math.prod(x.shape[: int(layout[1])]), -1).T


# ----------------------------------------------------------------------------------------------------
# load


def _open_weights(path: Path) -> tuple[dict[str, tensor_files.SafetensorsFile], list[Path]]:
    """Maps every tensor name to its (lazily opened) file."""
    index = path / SAFE_INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise ValueError(f"{index}: expected JSON with a 'weight_map' key") from None
        files = {name: path / name for name in sorted(set(weight_map.values()))}
        opened = {name: tensor_files.SafetensorsFile(p) for name, p in files.items()}
        return {key: opened[file] for key, file in weight_map.items()}, list(files.values())
    single = path / SAFE_WEIGHTS
    if not single.exists():
        raise FileNotFoundError(
            f"{path}: no weights found; expected {SAFE_WEIGHTS} or {SAFE_INDEX} "
            "(save PyTorch .bin checkpoints with safe_serialization=True first)"
        )
    f = tensor_files.SafetensorsFile(single)
    return {key: f for key in f.keys()}, [single]


def _param_paths(tree: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _param_paths(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _set(tree: dict, path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> object:
    for key in path:
        tree = tree[key]
    return tree


def load(path: str | Path, *, dtype: str | None = None, mesh: Mesh | None = None) -> tuple[ModelConfig, dict]:
    """Loads an HF folder -> (ModelConfig, params), params placed on `mesh` (or the first device).

    dtype: param and compute dtype ('float32', 'bfloat16', ...); default: the checkpoint's own.
    """
    path = Path(path)
    config = read_config(path)
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; expected one of {DTYPES}")
        config = config.replace(param_dtype=dtype, dtype=dtype)
    tensors, files = _open_weights(path)
    shapes = qwen.param_shapes(config)
    if mesh is None:
        shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.local_devices()[0]), shapes)
    else:
        shardings = mesh_lib.shardings_for(qwen.param_logical_axes(config), shapes, mesh)
    target = np.dtype(ml_dtypes.bfloat16) if config.param_dtype == "bfloat16" else np.dtype(config.param_dtype)

    used: set[str] = set()
    params: dict = {}
    for ours, shape in _param_paths(shapes):
        template, layout = KEY_TABLE[ours]
        layered = ours[0] == "layers"
        per_layer = shape.shape[1:] if layered else shape.shape
        names = [template.format(i=i) for i in range(config.num_layers)] if layered else [template]
        for name in names:
            if name not in tensors:
                raise KeyError(f"{path}: tensor {name!r} is missing from {', '.join(p.name for p in files)}")
            expected, got = hf_shape(layout, per_layer), tensors[name].shape(name)
            if got != expected:
                raise ValueError(
                    f"{tensors[name].path}: tensor {name!r} has shape {got}, expected {expected} for {config.model_type}"
                )
        used.update(names)
        _set(params, ours, _place(tensors, names, layout, per_layer, layered, target, shape.shape, _get(shardings, ours)))
    unexpected = [k for k in tensors if k not in used and not k.endswith(_IGNORED_SUFFIXES)]
    unexpected = [k for k in unexpected if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if unexpected:
        log.warning("%s: ignoring %d unexpected tensors, e.g. %s", path, len(unexpected), unexpected[:3])
    return config, params


def _place(tensors, names, layout, per_layer, layered, target, shape, sharding) -> jax.Array:
    """Builds one global array; each device's callback reads only the slice it holds."""

    def read(i: int) -> np.ndarray:
        return to_ours(layout, tensors[names[i]][names[i]], per_layer)

    def callback(index: tuple[slice, ...]) -> np.ndarray:
        if not layered:
            return np.asarray(read(0)[index], dtype=target)
        rows = range(*index[0].indices(shape[0]))
        return np.stack([np.asarray(read(i)[index[1:]], dtype=target) for i in rows])

    return jax.make_array_from_callback(shape, sharding, callback)


# ----------------------------------------------------------------------------------------------------
# save


def _hf_tensors(config: ModelConfig, params: dict) -> Iterator[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """(HF name, HF shape, producer) for every tensor, one stacked param fetched to host at a time."""
    for ours, leaf in _param_paths(params):
        if ours not in KEY_TABLE:
            raise KeyError(f"param {'/'.join(ours)} has no Hugging Face name")
        template, layout = KEY_TABLE[ours]
        cache: dict[str, np.ndarray] = {}

        def host(leaf=leaf, cache=cache) -> np.ndarray:
            if "x" not in cache:
                cache.clear()
                cache["x"] = mesh_lib.to_host(leaf)
            return cache["x"]

        if ours[0] == "layers":
            for i in range(config.num_layers):
                yield template.format(i=i), hf_shape(layout, leaf.shape[1:]), (
                    lambda i=i, layout=layout, host=host: to_hf(layout, host()[i])
                )
        else:
            yield template, hf_shape(layout, leaf.shape), lambda layout=layout, host=host: to_hf(layout, host())


def save(
    path: str | Path,
    config: ModelConfig,
    params: dict,
    *,
    tokenizer_dir: str | Path | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 2**30,
    extra_config: dict | None = None,
) -> Path:
    """Writes an HF model folder atomically (temp folder, then rename). Returns the folder.

    dtype: dtype of the written tensors (default: config.param_dtype). Above `max_shard_bytes` the
    weights are split into model-0000k-of-0000n.safetensors with an index. extra_config: keys kept
    from an original config.json (ours win where both define a key). Only process 0 writes.
    """
    path = Path(path)
    dtype = dtype or config.param_dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {DTYPES}")
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    tensors = list(_hf_tensors(config, params))
    shards: list[list] = [[]]
    size = 0
    for item in tensors:
        nbytes = math.prod(item[1]) * np_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    if jax.process_index() != 0:
        for _, _, produce in tensors:  # every process joins the gathers of non-addressable arrays
            produce()
        return path

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        names = [SAFE_WEIGHTS] if len(shards) == 1 else [
            f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))
        ]
        weight_map, total = {}, 0
        for name, shard in zip(names, shards):
            arrays = {hf_name: np.asarray(produce(), dtype=np_dtype) for hf_name, _, produce in shard}
            tensor_files.write(tmp / name, arrays)
            weight_map.update({k: name for k in arrays})
            total += sum(a.nbytes for a in arrays.values())
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / SAFE_INDEX).write_text(json.dumps(index, indent=2))
        hf_config = {**(extra_config or {}), **config_to_hf(config, dtype)}
        hf_config.pop("rope_parameters", None)
        hf_config.pop("dtype", None)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(_generation_config(config), indent=2))
        if tokenizer_dir is not None:
            _copy_tokenizer(Path(tokenizer_dir), tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _generation_config(config: ModelConfig) -> dict:
    eos = list(config.eos_token_ids)
    return {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": config.pad_token_id,
    }


def _copy_tokenizer(source: Path, dest: Path) -> None:
    found = [source / name for name in TOKENIZER_FILES if (source / name).exists()]
    if not found:
        raise FileNotFoundError(f"{source}: no tokenizer files found (expected one of {TOKENIZER_FILES})")
    for file in found:
        shutil.copy2(file, dest / file.name)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Renames tmp to path; an existing path is replaced only once the new folder is complete."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
