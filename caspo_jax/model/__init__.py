"""Models: the Flax decoder (`qwen`), the KV cache (`cache`), HF checkpoints (`hf`), tokenizers."""

from caspo_jax.model.hf import load, save
from caspo_jax.model.qwen import Transformer, forward, init_params

__all__ = ["Transformer", "forward", "init_params", "load", "save"]
