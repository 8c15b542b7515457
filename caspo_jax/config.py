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


TRAIN_MODES = ("dpo", "sft")
TRUNCATION = ("left", "error")
SCHEDULES = ("linear", "cosine", "constant")
REFERENCES = ("precomputed", "live")
DPO_LOSSES = ("sigmoid", "robust", "ipo", "hinge")  # caspo_jax.train.losses


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Pair (or SFT) records -> tokens. Lengths count prompt + one completion, as TRL's max_length does."""

    max_length: int = 1024
    # Too long: 'left' drops the prompt's oldest tokens (and cuts a completion over max_length - 1 from the
    # right), counting both; 'error' raises naming the record.
    truncation: str = "left"
    chat_template: bool = False  # wrap each prompt in the tokenizer's chat template
    add_eos: bool = False  # append EOS to completions: yes for whole responses, no for CASPO steps
    shuffle: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION:
            raise ValueError(f"data.truncation: expected one of {TRUNCATION}, got {self.truncation!r}")
        if self.max_length < 2:
            raise ValueError(f"data.max_length must be >= 2, got {self.max_length}")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """The preference loss (see caspo_jax.train.losses for the formulas and TRL's names)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"  # 'sigmoid' | 'robust' | 'ipo' | 'hinge'
    label_smoothing: float = 0.0  # cDPO (sigmoid) or robust DPO flip rate
    rpo_alpha: float = 1.0  # weight of the chosen side's mean token NLL (RPO); 0 = plain DPO
    length_normalize: bool | None = None  # None: TRL's choice (only 'ipo' averages over tokens)
    reference: str = "precomputed"  # 'precomputed' once per dataset, or 'live' (a frozen copy in the step)

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f"dpo.reference: expected one of {REFERENCES}, got {self.reference!r}")
        if self.loss_type not in DPO_LOSSES:
            raise ValueError(f"dpo.loss_type: expected one of {DPO_LOSSES}, got {self.loss_type!r}")
        if not self.beta > 0 or self.rpo_alpha < 0 or not 0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"dpo: expected beta > 0, rpo_alpha >= 0, 0 <= label_smoothing < 0.5; got beta={self.beta}, "
                f"rpo_alpha={self.rpo_alpha}, label_smoothing={self.label_smoothing}"
            )


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, then linear, cosine or constant decay, and global-norm clipping."""

    learning_rate: float = 1e-6
    schedule: str = "linear"  # after warmup: 'linear' or 'cosine' to 0 at the last step, or 'constant'
    warmup_steps: int = 0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule: expected one of {SCHEDULES}, got {self.schedule!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One DPO or SFT run: `caspo-jax dpo|sft` read this from YAML plus dotted overrides."""

    mode: str = "dpo"  # 'dpo' (pairs) or 'sft' (NLL of the chosen/completion text)
    batch_size: int = 8  # pairs (or sequences) per optimizer step, over all devices
    grad_accum: int = 1  # micro-batches per step; batch_size must be a multiple
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    param_dtype: str = "float32"
    compute_dtype: str = "float32"  # 'bfloat16' computes in bf16; logits and losses stay fp32
    remat: bool = False  # recompute each layer in the backward pass (less memory, more time)
    logits_chunk: int = 64  # completion positions per row per LM-head chunk: memory B * chunk * V * 4 bytes
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 3
    mesh: MeshConfig = MeshConfig()
    data: DataConfig = DataConfig()
    dpo: DPOConfig = DPOConfig()
    optim: OptimConfig = OptimConfig()

    def __post_init__(self) -> None:
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"mode: expected one of {TRAIN_MODES}, got {self.mode!r}")
        for field in ("param_dtype", "compute_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(f"{field}: expected one of {DTYPES}, got {getattr(self, field)!r}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a positive multiple of grad_accum ({self.grad_accum})"
            )
        for field in ("epochs", "logits_chunk", "log_every", "save_every", "keep_checkpoints"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


EVAL_METHODS = ("greedy", "sc", "cat", "deepconf")
CAT_ANSWERS = ("vote", "best")


@dataclasses.dataclass(frozen=True)
class CaTConfig:
    """CaT step-level search (caspo_jax.infer.cat). Knobs the paper leaves open are marked (open)."""

    width: int = 2  # W: live paths kept per round (open)
    branch: int = 3  # B: sampled next steps per live path per round (open)
    budget: int = 10  # K: paths started per question, pruned ones included (paper: 10)
    tau: float = 0.5  # paths whose confidence falls below tau are pruned (open)
    path_aggregation: str = "mean"  # 'mean' | 'min' | 'product' of step confidences
    answer: str = "vote"  # 'vote': confidence-weighted vote over finished paths | 'best': best path
    max_steps: int = 16  # rounds (steps per path)
    step_tokens: int = 128  # most tokens of one step
    max_tokens: int = 0  # token budget per question over all paths (0: none)
    # Adaptive branching (open): only survivors whose last step confidence is below this start new
    # paths, the others just continue, so the budget goes where steps are uncertain (None: all branch).
    branch_below: float | None = None
    # DeepConf-online (Fu et al. 2025), for method 'deepconf': warm-up traces, window, percentile.
    warmup: int = 4
    window: int = 64
    percentile: float = 10.0

    def __post_init__(self) -> None:
        if min(self.width, self.branch, self.budget, self.max_steps, self.step_tokens, self.warmup, self.window) < 1:
            raise ValueError("cat: width, branch, budget, max_steps, step_tokens, warmup and window must be >= 1")
        if self.path_aggregation not in ("mean", "min", "product"):
            raise ValueError(f"cat.path_aggregation: expected mean, min or product, got {self.path_aggregation!r}")
        if self.answer not in CAT_ANSWERS:
            raise ValueError(f"cat.answer: expected one of {CAT_ANSWERS}, got {self.answer!r}")
        if self.max_tokens < 0 or not 0 <= self.percentile <= 100:
            raise ValueError("cat: max_tokens must be >= 0 and percentile in [0, 100]")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How `caspo-jax eval` decodes and scores (every method scores traces the same way)."""

    method: str = "greedy"  # 'greedy' | 'sc' (self-consistency) | 'cat' | 'deepconf'
    k: int = 8  # samples per question for sampled methods
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 8  # questions per generate call
    seed: int = 0
    chat: bool | None = None  # None: the chat template when the tokenizer has one
    step_splitter: str = "blank_line"  # see caspo_jax.caspo.steps
    signal: str = "entropy_conf"  # token confidence: entropy_conf | max_prob | topk_conf
    cat: CaTConfig = CaTConfig()  # methods 'cat' and 'deepconf' (k is their path budget)

    def __post_init__(self) -> None:
        if self.method not in EVAL_METHODS:
            raise ValueError(f"method: expected one of {EVAL_METHODS}, got {self.method!r}")
        if self.k < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("k, batch_size and max_new_tokens must be >= 1")
        if self.signal not in ("entropy_conf", "max_prob", "topk_conf"):
            raise ValueError(f"signal: expected entropy_conf, max_prob or topk_conf, got {self.signal!r}")


LABELERS = ("verifier", "judge", "outcome")


@dataclasses.dataclass(frozen=True)
class CaspoConfig:
    """`caspo-jax caspo`: R rounds of sample -> annotate -> label -> pair -> DPO -> evaluate.

    Every stage of a round writes once, atomically, under output_dir/round_{r}/; a rerun skips what
    is finished. Defaults follow DESIGN.md where the paper is silent.
    """

    output_dir: str = "runs/caspo"  # everything goes here
    # The starting policy (HF folder with tokenizer). None: the arith world's tiny model, built in
    # process (random Qwen3 + char tokenizer) and warmed up by `warmup_sft_steps` of SFT.
    model: str | None = None
    rounds: int = 2  # R; the paper's gains plateau after round 2
    seed: int = 0
    # Training questions (each needs a reference answer): 'arith' (the demo world), a benchmark name
    # of caspo_jax.data.sources (with data_path a local file/folder), or 'jsonl' (data_path + fields).
    data: str = "arith"
    data_path: str | None = None
    data_split: str | None = None  # benchmark split (default: the benchmark's own)
    question_field: str = "question"  # 'jsonl' only
    answer_field: str = "answer"  # 'jsonl' only
    num_train: int = 8  # training questions (arith: generated; else the first num_train after held-out)
    num_heldout: int = 4  # held-out questions for each round's evaluation (taken first from the source)
    arith_min_ops: int = 3
    arith_max_ops: int = 3
    warmup_sft_steps: int = 0  # tiny model only: SFT steps on arith solutions before round 1
    # Sampling of solutions (N per question) and of siblings (M per candidate prefix, one step each).
    samples_per_question: int = 8  # N
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    siblings: int = 4  # M
    sibling_max_new_tokens: int = 128
    # Confidence and steps.
    signal: str = "entropy_conf"  # token confidence: entropy_conf | max_prob | topk_conf
    step_aggregation: str = "mean"  # 'mean' | 'min' over a step's tokens
    step_splitter: str = "blank_line"  # see caspo_jax.caspo.steps
    # Pair thresholds: fixed (tau_low, tau_high) or, when both quantiles are set, quantiles of step
    # confidence over clean-prefix steps of the round (recomputed every round).
    tau_low: float = 0.5
    tau_high: float = 0.8
    low_quantile: float | None = None
    high_quantile: float | None = None
    # Labels: 'verifier' (arith world only), 'judge' (judge_model: an HF folder) or 'outcome'.
    labeler: str = "verifier"
    judge_model: str | None = None
    judge_max_new_tokens: int = 64
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()  # how every evaluation decodes (held-out split and benchmarks)
    # Benchmarks (caspo_jax.data.sources names) evaluated after every round besides the held-out split,
    # read from eval_data_dir/<name> (None: the Hugging Face Hub); eval_limit questions each (None: all).
    eval_benchmarks: tuple[str, ...] = ()
    eval_data_dir: str | None = None
    eval_limit: int | None = None
    mesh: MeshConfig = MeshConfig()  # sampling and labelling mesh (training uses train.mesh)

    def __post_init__(self) -> None:
        if self.labeler not in LABELERS:
            raise ValueError(f"labeler: expected one of {LABELERS}, got {self.labeler!r}")
        if self.labeler == "judge" and not self.judge_model:
            raise ValueError("labeler: 'judge' needs judge_model (an HF model folder)")
        if self.labeler == "verifier" and self.data != "arith":
            raise ValueError("labeler: 'verifier' checks arith steps only; use 'judge' or 'outcome' for other data")
        if self.train.mode != "dpo":
            raise ValueError(f"train.mode: CASPO trains with dpo, got {self.train.mode!r}")
        for field in ("rounds", "samples_per_question", "siblings", "num_train", "max_new_tokens", "sibling_max_new_tokens"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if (self.low_quantile is None) != (self.high_quantile is None):
            raise ValueError("low_quantile and high_quantile: set both (quantile thresholds) or neither (tau_low/tau_high)")
        if self.data != "arith" and not self.data_path:
            raise ValueError(f"data: {self.data!r} needs data_path (a local file or folder)")
        if self.step_aggregation not in ("mean", "min"):
            raise ValueError(f"step_aggregation: expected 'mean' or 'min', got {self.step_aggregation!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
