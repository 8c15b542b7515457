"""The `caspo-jax` command end to end (in process, as a user would call it)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import transformers

from caspo_jax.cli import COMMANDS, main
from caspo_jax.model import hf
from hf_models import save_hf_model, torch_logits


def test_selfcheck_passes(capsys, tmp_path):
    assert main(["selfcheck", "--out", str(tmp_path / "tiny")]) == 0
    out = capsys.readouterr().out
    assert "bit-exact: True" in out and "selfcheck: OK" in out
    assert (tmp_path / "tiny" / "config.json").exists()


def test_convert_to_bf16_then_inspect(capsys, tmp_path):
    source = save_hf_model("llama", tmp_path / "src")
    (source / "tokenizer.json").write_text("{}")
    assert main(["convert", "--from", str(source), "--to", str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    out = tmp_path / "out"
    assert (out / "tokenizer.json").exists()
    written = json.loads((out / "config.json").read_text())
    assert written["torch_dtype"] == "bfloat16" and written["rope_scaling"]["rope_type"] == "llama3"
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model_type"] == "llama" and summary["dtype"] == "bfloat16"
    assert summary["params"] == hf.read_config(out).num_params
    # The checksum is transformers' own logits on the same fixed prompt (bf16 weights, fp32 compute).
    theirs = torch_logits(transformers.AutoModelForCausalLM.from_pretrained(out, dtype="float32"), np.arange(3, 19)[None])
    assert summary["logits_checksum"]["argmax_last"] == int(theirs[0, -1].argmax())


def test_user_errors_exit_2_with_one_line(capsys, tmp_path):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("caspo-jax inspect: error:") and "config.json" in err


def test_help_lists_every_command_without_loading_jax():
    code = (
        "import contextlib, io, sys\n"
        "from caspo_jax.cli import COMMANDS, main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "assert all(name in out.getvalue() for name in COMMANDS), out.getvalue()\n"
        "assert 'jax' not in sys.modules and 'transformers' not in sys.modules, 'help imported jax'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_command_parses_its_own_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert f"usage: caspo-jax {name}" in capsys.readouterr().out
