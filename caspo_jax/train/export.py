"""A training checkpoint -> a Hugging Face model folder for serving (and, optionally, the Hub).

A run folder (`caspo-jax dpo|sft --out RUN`) holds `checkpoints/<step>/` (Orbax: `state`, `data`,
`config`) and `run.json` (the model folder the run started from). `export` finds a step (the latest,
or the one asked for), restores only its params (no optimizer state is read) onto a mesh over the
local devices, and writes what `transformers.AutoModelForCausalLM.from_pretrained` and vLLM load:
config.json (the base model's, with ours on top), safetensors in the requested dtype, the base
model's tokenizer files and a README.md model card that records the training config. The folder is
built beside `out` and renamed into place, so a failed export never leaves a half-written target.

    result = export("runs/dpo", "exported", dtype="bfloat16")
    push_to_hub(result.path, "me/qwen3-caspo")
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import jax
import orbax.checkpoint as ocp
import yaml

from caspo_jax import files
from caspo_jax.config import DTYPES, ModelConfig, MeshConfig
from caspo_jax.model import hf, qwen
from caspo_jax.model.hf_config import read_config
from caspo_jax.parallel import mesh as mesh_lib

RUN_RECORD = "run.json"  # written by the trainer into its run folder: {"model_dir": ...}
CARD = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export` wrote: the folder, the step it holds, the weights' dtype and the run's TrainConfig."""

    path: Path
    step: int
    dtype: str
    train_config: dict


def find_step(checkpoint: str | Path, step: int | None = None) -> tuple[Path, int]:
    """--checkpoint (a run folder, its checkpoints/ folder or one step folder) -> (checkpoints folder, step).

    Without `step` (and not given a step folder), the latest step."""
    path = Path(checkpoint).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint folder (expected a run folder or a checkpoint step)")
    if path.name.isdigit() and (path / "state").is_dir():
        if step is not None and step != int(path.name):
            raise ValueError(f"{path} is the checkpoint of step {path.name}, but step {step} was asked for")
        return path.parent, int(path.name)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "state").is_dir())
    if not steps:
        raise FileNotFoundError(
            f"{folder}: no checkpoint steps (expected numbered step folders with a 'state' item, "
            "as `caspo-jax dpo|sft --out DIR` writes under DIR/checkpoints)"
        )
    if step is None:
        return folder, steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"{folder}: no checkpoint of step {step}; it holds steps {', '.join(map(str, steps))}")
    return folder, step


def find_model_dir(checkpoints: Path, model_dir: str | Path | None = None) -> Path:
    """The base model folder: `model_dir` if given, else the one the run recorded in run.json."""
    if model_dir is None:
        record = checkpoints.parent / RUN_RECORD
        if not record.exists():
            raise FileNotFoundError(
                f"{record} not found, so the base model folder is unknown: pass --model DIR "
                "(the Hugging Face folder the run started from: config.json and tokenizer files)"
            )
        try:
            model_dir = json.loads(record.read_text())["model_dir"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{record}: expected JSON with a 'model_dir' key") from None
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir / 'config.json'} not found (the base model folder needs its config.json)")
    if not any((model_dir / name).exists() for name in hf.TOKENIZER_FILES):
        raise FileNotFoundError(f"{model_dir}: no tokenizer files (expected one of {', '.join(hf.TOKENIZER_FILES)})")
    return model_dir


class _QuietReadOnly(logging.Filter):
    """Drops Orbax's notice that the manager is read-only, which is what is asked for here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "read only" not in record.getMessage()


@contextlib.contextmanager
def _manager(checkpoints: Path) -> Iterator[ocp.CheckpointManager]:
    """A read-only manager: never cleans up, so a run still writing the folder is left alone."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    quiet, absl = _QuietReadOnly(), logging.getLogger("absl")
    absl.addFilter(quiet)
    try:
        manager = ocp.CheckpointManager(checkpoints, options=options)
    finally:
        absl.removeFilter(quiet)
    with manager:
        yield manager


def read_train_config(checkpoints: Path, step: int) -> dict:
    """The TrainConfig (as a dict) saved with `step`."""
    with _manager(checkpoints) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    if not isinstance(restored.config, dict):
        raise ValueError(f"{checkpoints / str(step) / 'config'}: expected the run's TrainConfig as a JSON mapping")
    return restored.config


def restore_params(checkpoints: Path, step: int, config: ModelConfig, mesh: jax.sharding.Mesh) -> dict:
    """Only the params of `step` (dtype config.param_dtype), each placed straight onto its mesh sharding."""
    shapes = qwen.param_shapes(config)
    shardings = mesh_lib.shardings_for(qwen.param_logical_axes(config), shapes, mesh)
    target = {
        "params": jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    }
    args = ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    try:
        with _manager(checkpoints) as manager:
            restored = manager.restore(step, args=ocp.args.Composite(state=args))
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"{checkpoints / str(step) / 'state'}: its params do not match the {config.model_type} model of "
            f"the base folder ({e})"
        ) from None
    return restored.state["params"]


def model_card(train_config: dict, *, step: int, base_model: str, source: Path, dtype: str, name: str) -> str:
    """README.md: YAML front matter the Hub reads, provenance, usage and the training config as YAML."""
    mode = train_config.get("mode", "dpo")
    meta = {"library_name": "transformers", "pipeline_tag": "text-generation"}
    if _REPO_ID.match(base_model) and not Path(base_model).exists():
        meta["base_model"] = base_model
    meta["tags"] = ["caspo", "caspo-jax", mode, "jax"]
    method = "CASPO/DPO preference" if mode == "dpo" else "supervised (SFT)"
    return (
        f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n"
        f"# {name}\n\n"
        f"Fine-tuned from `{base_model}` by {method} training with caspo-jax (CASPO: confidence-aware "
        f"step-wise preference optimisation, arXiv 2605.07353). Exported from step {step} of "
        f"`{source}`, weights in {dtype}.\n\n"
        "## Use\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{name}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")\n'
        "```\n\n"
        "## Training config\n\n"
        f"```yaml\n{yaml.safe_dump(train_config, sort_keys=False)}```\n"
    )


def export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    dtype: str | None = None,
    model_dir: str | Path | None = None,
    base_model: str | None = None,
    repo_id: str | None = None,
    mesh_config: MeshConfig = MeshConfig(),
) -> ExportResult:
    """Writes the params of a checkpoint step as an HF folder at `out` (replacing it once complete).

    dtype: of the written tensors (default: the params' training dtype). base_model: the name the card
    gives the base model (default: the base folder's path). repo_id: the Hub repo the card's usage
    snippet loads (default: the folder's name)."""
    mesh_lib.initialize_distributed()
    checkpoints, step = find_step(checkpoint, step)
    model_dir = find_model_dir(checkpoints, model_dir)
    train_config = read_train_config(checkpoints, step)
    param_dtype = train_config.get("param_dtype", "float32")
    dtype = dtype or param_dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {DTYPES}")
    config = read_config(model_dir).replace(param_dtype=param_dtype, dtype=param_dtype)
    params = restore_params(checkpoints, step, config, mesh_lib.make_mesh(mesh_config))

    out = Path(out).absolute()
    staging = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:8]}"
    original = json.loads((model_dir / "config.json").read_text())
    try:
        hf.save(staging, config, params, tokenizer_dir=model_dir, dtype=dtype, extra_config=original)
        if files.is_primary():
            source = Path(checkpoints.parent.name, checkpoints.name, str(step))
            card = model_card(
                train_config, step=step, base_model=base_model or str(model_dir), source=source, dtype=dtype,
                name=repo_id or out.name,
            )
            files.write_text(staging / CARD, card)
            hf._swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    mesh_lib.sync(f"exported {out}")  # process 0 wrote it; others may read it next
    return ExportResult(out, step, dtype, train_config)


def hub_token(repo_id: str) -> str:
    """Checks `repo_id` and finds a Hub token (HF_TOKEN or `hf auth login`), before any work is done."""
    import huggingface_hub

    if not _REPO_ID.match(repo_id):
        raise ValueError(f"--push-to-hub {repo_id!r}: expected a repo id of the form owner/name")
    token = huggingface_hub.get_token()
    if not token:
        raise PermissionError(
            f"--push-to-hub {repo_id}: no Hugging Face token found; run `hf auth login` or set HF_TOKEN "
            "(a token with write access)"
        )
    return token


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Uploads an exported folder to the Hub model repo `repo_id` (created if missing). Returns its URL."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    api = huggingface_hub.HfApi(token=token or hub_token(repo_id))
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model",
            commit_message=f"Upload {Path(folder).name} (caspo-jax export)",
        )
    except (HfHubHTTPError, OSError) as e:
        message = f"--push-to-hub {repo_id}: the upload failed ({e}); the export is kept in {folder}"
        raise PermissionError(message) from None
    return str(url)
