"""The notebooks run top to bottom on CPU with their tiny defaults (nbclient), and are stored without outputs.

Each runs in a fresh python3 kernel of this interpreter, in a temporary working folder, on 8 fake CPU
devices (as a TPU v2-8 / v3-8 host has 8), with a per-cell timeout; a cell error fails the test.
"""

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 300


def kernel_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8", HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg",
    )
    env.pop("KAGGLE_KERNEL_RUN_TYPE", None)  # never take the hosted-runtime install branch here
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def this_interpreter_kernel(tmp_path_factory, monkeypatch):
    """'python3' is this interpreter (JUPYTER_PATH comes first), whatever kernels the machine has installed."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(root))


def execute(name: str, cwd: Path, env: dict[str, str]) -> list[dict]:
    """Runs notebooks/`name` in `cwd`; returns every cell's outputs, in order."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
        allow_errors=False,
    )
    client.execute(env=env)  # raises CellExecutionError naming the cell on any error
    return [output for cell in nb.cells for output in cell.get("outputs", [])]


def stdout(outputs: list[dict]) -> str:
    return "".join(o["text"] for o in outputs if o.get("name") == "stdout")


def displayed(outputs: list[dict], mime: str) -> list:
    return [o["data"][mime] for o in outputs if mime in o.get("data", {})]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_stored_valid_and_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {cell.id} has outputs"
        assert "execution" not in cell.metadata, f"{path.name}: cell {cell.id} keeps execution timings"
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, f"{path.name}: expected one cell tagged 'parameters'"


def test_every_notebook_is_executed_here():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == ["demo_plots.ipynb", "quickstart.ipynb"]


def test_quickstart_runs_top_to_bottom_on_cpu(tmp_path):
    text = stdout(execute("quickstart.ipynb", tmp_path, kernel_env()))
    assert "JAX " in text and " x cpu" in text.lower()
    assert re.search(r"sample 3: confidence 0\.\d{3}, \d+ steps", text)
    assert re.search(r"^answer: .* rounds: [1-3] ", text, re.M)  # CaT's rendered tree
    losses = [float(x) for x in re.findall(r"^step \d: loss (\S+),", text, re.M)]
    assert len(losses) == 3 and losses[-1] < losses[0]  # three DPO steps that lower the loss
    diff = float(re.search(r"max \|logits diff\| JAX vs transformers on the export: (\S+)", text).group(1))
    change = float(re.search(r"max \|logits change\| from DPO \(export vs base model\): (\S+)", text).group(1))
    assert diff < 1e-4 and change > 1e-3  # the export is the trained model, and transformers agrees with us
    assert (tmp_path / "caspo_quickstart" / "exported" / "README.md").exists()


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def test_demo_plots_redraws_the_report_of_a_finished_demo(fast_demo_dir, tmp_path):
    """Pointed (CASPO_DEMO_OUT) at a finished `--fast --seed 0` run, the demo resumes at once and the
    notebook re-draws its plots and shows its table from report.json and the step-level files."""
    report = json.loads((fast_demo_dir / "report.json").read_text())
    outputs = execute("demo_plots.ipynb", tmp_path, kernel_env(CASPO_DEMO_OUT=str(fast_demo_dir)))
    text = stdout(outputs)
    (table,) = displayed(outputs, "text/markdown")
    assert table.startswith("| figure (held-out, sampled at T=1) | base | caspo | control | CASPO vs base |")
    aurocs = " | ".join(fmt(figures["auroc"]) for figures in report["step_level"].values())
    assert f"| AUROC of step confidence vs step correctness | {aurocs} |" in table
    for model, figures in report["step_level"].items():
        assert f"{model}: " in text and f"AUROC {fmt(figures['auroc'])}" in text
    for model, decoders in report["decoders"].items():
        for figures in decoders.values():
            assert f"accuracy {fmt(figures['accuracy'])}" in text
    drawn = sorted(p.name for p in (tmp_path / "demo_plots").iterdir())
    models = list(report["step_level"])
    expected = [f"{kind}_{m}.png" for m in models for kind in ("confidence_hist", "reliability")]
    assert drawn == sorted(expected + ["accuracy_vs_tokens.png"])
    assert all((tmp_path / "demo_plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in drawn)
    assert len(displayed(outputs, "image/png")) == len(drawn)  # each one shown in the notebook
