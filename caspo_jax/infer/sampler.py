"""Sampling from a model: what to generate (`SamplingConfig`) and the host API (`Sampler`).

`Sampler.generate` takes prompts as token ids, left-pads them to a bucketed length (bounding
recompiles), places them on the mesh (batch over ('data', 'fsdp')), runs `decoding.prefill` and
`decoding.decode`, and returns a `SampleOutput` of numpy arrays that every process sees in full.
`num_samples` continuations of each prompt share one prefill. Bad input raises ValueError.

    sampler = Sampler(config, params, tokenizer, mesh=mesh)
    out = sampler.generate(prompt_ids, SamplingConfig(temperature=0.7, top_p=0.95), num_samples=8)
    out.tokens[3, : out.lengths[3]], out.signals.entropy_conf[3], sampler.texts(out)[3]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from caspo_jax.config import ModelConfig
from caspo_jax.infer import confidence, decoding
from caspo_jax.infer import stops as stops_lib
from caspo_jax.infer.decoding import SampleOutput
from caspo_jax.parallel import mesh as mesh_lib

__all__ = ["SamplingConfig", "Sampler", "SampleOutput"]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """What to generate. temperature 0 is greedy; top_k 0 and top_p 1 are off.

    step_delimiter: the string that ends a reasoning step (None: no step tracking); steps are marked
    in `SampleOutput.step_ends`, and until_step_end also stops each row at the end of its current step.
    Stop strings and the delimiter need the sampler's tokenizer. signals=False skips the confidence
    signals (log-probs are always returned).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    step_delimiter: str | None = "\n\n"
    until_step_end: bool = False
    signals: bool = True
    confidence_k: int = confidence.DEEPCONF_K

    def __post_init__(self) -> None:
        if isinstance(self.stop_strings, str):
            raise ValueError(f"stop_strings must be a sequence of strings, got the string {self.stop_strings!r}")
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.until_step_end and self.step_delimiter is None:
            raise ValueError("until_step_end needs a step_delimiter")
        if self.confidence_k < 1:
            raise ValueError(f"confidence_k must be >= 1, got {self.confidence_k}")

    @property
    def strings(self) -> tuple[str, ...]:
        """The strings searched for: the stop strings, then the step delimiter (`stop_index` counts here)."""
        return self.stop_strings + ((self.step_delimiter,) if self.step_delimiter is not None else ())

    def plan(self) -> decoding.DecodePlan:
        """The static part, which shapes the compiled graph."""
        return decoding.DecodePlan(
            max_new_tokens=self.max_new_tokens,
            greedy=self.temperature == 0,
            top_k=self.top_k,
            use_top_p=self.top_p < 1,
            signals=self.signals,
            confidence_k=self.confidence_k,
            num_stopping=len(self.stop_strings) + int(self.until_step_end),
            step_string=len(self.stop_strings) if self.step_delimiter is not None else -1,
        )


class Sampler:
    """Generation for one model (params placed by `hf.load`, optionally on `mesh`).

    tokenizer: needed for stop strings, the step delimiter and `texts`. max_length: cache slots per
    row, prompt plus new tokens (default: the model's max_position_embeddings). Prompt lengths are
    padded up to a multiple of length_bucket. EOS ids: the model's and the tokenizer's by default.
    """

    def __init__(
        self,
        model: ModelConfig,
        params: dict,
        tokenizer=None,
        *,
        mesh: Mesh | None = None,
        max_length: int | None = None,
        length_bucket: int = 32,
        eos_token_ids: Sequence[int] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        self.model, self.params, self.tokenizer, self.mesh = model, params, tokenizer, mesh
        self.max_length = max_length or model.max_position_embeddings
        self.length_bucket = length_bucket
        if eos_token_ids is None:
            extra = getattr(tokenizer, "eos_token_id", None)
            eos_token_ids = tuple(model.eos_token_ids) + ((extra,) if extra is not None else ())
        self.eos_token_ids = tuple(sorted(set(eos_token_ids)))
        if pad_token_id is None:
            pad_token_id = model.pad_token_id if model.pad_token_id is not None else getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = 0 if pad_token_id is None else pad_token_id
        self._pieces: list[str] | None = None
        self._tables: dict[tuple[str, ...], stops_lib.StopTable] = {}

    @property
    def pieces(self) -> list[str]:
        """Each token id's own decoded text (`stops.token_pieces`), computed once."""
        if self._pieces is None:
            if self.tokenizer is None:
                raise ValueError(
                    "finding strings in generated text needs a tokenizer: pass one to Sampler, or use "
                    "SamplingConfig(step_delimiter=None) without stop strings"
                )
            self._pieces = stops_lib.token_pieces(self.tokenizer, self.model.vocab_size)
        return self._pieces

    def table(self, strings: tuple[str, ...]) -> stops_lib.StopTable:
        """The device tables for finding `strings` in generated text (built once per tuple)."""
        if strings not in self._tables:
            self._tables[strings] = jax.tree.map(self.replicate, stops_lib.build_table(self.pieces, strings))
        return self._tables[strings]

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig = SamplingConfig(),
        *,
        num_samples: int = 1,
        seed: int = 0,
        first_row: int = 0,
    ) -> SampleOutput:
        """prompts: P token-id lists -> SampleOutput of P * num_samples rows (numpy), prompt-major.

        Row r (counting from first_row) draws its own random stream from (seed, r), so a prompt's
        samples do not depend on the batch it came in or on the mesh."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        table = self.table(sampling.strings) if sampling.strings else None
        tokens, mask = self.left_pad(prompts, sampling.max_new_tokens, num_samples)
        rows = tokens.shape[0] * num_samples
        knobs = decoding.Knobs(  # host scalars: the same on every process, replicated by jit
            temperature=np.float32(sampling.temperature or 1.0),
            top_p=np.float32(sampling.top_p),
            eos=self.replicate(np.asarray(self.eos_token_ids or (-1,), np.int32)),
            pad=np.int32(self.pad_token_id),
            seed=np.int32(seed),
            rows=self.to_batch(np.arange(first_row, first_row + rows, dtype=np.int32)),
        )
        cache, logits = decoding.prefill(
            self.params, self.to_batch(tokens), self.to_batch(mask), model=self.model, num_samples=num_samples,
            cache_length=tokens.shape[1] + sampling.max_new_tokens, mesh=self.mesh,
        )
        out, _, _ = decoding.decode(
            self.params, cache, logits, knobs, table, model=self.model, plan=sampling.plan(), mesh=self.mesh
        )
        return jax.tree.map(lambda x: mesh_lib.to_host(x)[: len(prompts) * num_samples], out)

    def texts(self, output: SampleOutput) -> list[str]:
        """Each row's generated text (special tokens skipped)."""
        if self.tokenizer is None:
            raise ValueError("texts() needs a tokenizer: pass one to Sampler")
        return [
            self.tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
            for row, n in zip(np.asarray(output.tokens), np.asarray(output.lengths))
        ]

    def left_pad(self, prompts: Sequence[Sequence[int]], new_tokens: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Checks the prompts and left-pads them to [P', T]: T a bucket multiple, P' a multiple that
        lets the P' * num_samples rows split over the batch axes (extra rows repeat prompt 0)."""
        prompts = [list(p) for p in prompts]
        if not prompts:
            raise ValueError("no prompts to sample from")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty: the model needs at least one token to go on from")
            if min(p) < 0 or max(p) >= self.model.vocab_size:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.model.vocab_size})")
            if len(p) + new_tokens > self.max_length:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens: with max_new_tokens={new_tokens} it needs "
                    f"{len(p) + new_tokens} cache slots, more than max_length={self.max_length}"
                )
        longest = max(map(len, prompts))
        width = min(-(-longest // self.length_bucket) * self.length_bucket, self.max_length - new_tokens)
        shards = 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        step = shards // math.gcd(shards, num_samples)
        prompts += [prompts[0]] * (-len(prompts) % step)
        tokens = np.full((len(prompts), width), self.pad_token_id, np.int32)
        mask = np.zeros((len(prompts), width), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, width - len(p) :] = p
            mask[i, width - len(p) :] = 1
        return tokens, mask

    def to_batch(self, x: np.ndarray) -> jax.Array:
        """A host array with the same value on every process -> split over the batch axes."""
        if self.mesh is None:
            return jnp.asarray(x)
        sharding = mesh_lib.batch_sharding(self.mesh, x.shape)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def replicate(self, x) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, mesh_lib.replicated(self.mesh), lambda index: x[index])
