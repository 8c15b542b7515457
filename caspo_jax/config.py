"""Configuration: the dataclasses every stage reads, YAML loading and dotted `key=value` overrides.

One place for all configs. `ModelConfig` describes a decoder architecture (read from a Hugging Face
config.json by `caspo_jax.model.hf`); `MeshConfig` describes the device mesh. Later stages add their
own dataclasses here and nest them in a top-level config loaded by `load_config`.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Qwen2/2.5, Qwen3 or Llama(-3.1) decoder. Variants differ only by these fields."""

    model_type: str  # 'qwen2' | 'qwen3' | 'llama'
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    # HF rope parameters beyond theta (llama3, linear) as sorted (key, value) pairs, hashable so the
    # config can be a static jit argument; None = default RoPE.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2/2.5: bias on q, k, v projections
    o_bias: bool = False  # Llama attention_bias=True also biases o_proj
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm on q and k (per head) before RoPE
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype; logits, softmax and norms are always fp32
    remat: bool = False  # rematerialise each layer in the backward pass (training memory)

    def __post_init__(self) -> None:
        if self.model_type not in ("qwen2", "qwen3", "llama"):
            raise ValueError(f"model_type: expected 'qwen2', 'qwen3' or 'llama', got {self.model_type!r}")
        for field in ("param_dtype", "dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"{field}: expected one of {DTYPES}, got {getattr(self, field)!r}")
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    @property
    def rope_scaling_dict(self) -> dict:
        return dict(self.rope_scaling or ())

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.qkv_bias:
            attn += h * (self.num_heads + 2 * self.num_kv_heads)
        if self.o_bias:
            attn += d
        if self.qk_norm:
            attn += 2 * h
        mlp = 3 * d * f + (2 * f + d if self.mlp_bias else 0)
        layer = attn + mlp + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * layer + d + head


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh ('data', 'fsdp', 'tensor'). -1 on one axis means "all remaining devices"."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1


# ----------------------------------------------------------------------------------------------------
# YAML and dotted overrides


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Converts a YAML/CLI value to the dataclass field's type, or raises naming the key."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), globals())  # noqa: S307 - our own annotations
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if value is None:
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _coerce(value, args[0], key)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        return tuple(_coerce(v, args[0], key) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if annotation in (int, float, str):
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Builds dataclass `cls` from a (nested) dict; unknown keys raise with their dotted name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]}; expected one of {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies `a.b.c=value` strings (value parsed as YAML) to a nested dict, returning a new dict."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a mapping")
        node[leaf] = yaml.safe_load(raw)
    return out


def load_yaml(path: str | Path, overrides: list[str] = ()) -> dict:
    """Reads a YAML mapping and applies dotted overrides; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return apply_overrides(data, list(overrides))
