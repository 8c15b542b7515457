"""Reports: JSON, markdown and PNG files are written whole and readable."""

import json
import os

import numpy as np
import pytest

from caspo_jax import files
from caspo_jax.eval import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR"


def test_write_json_converts_numpy_and_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "out" / "results.json"
    data = {"acc": np.float32(0.5), "counts": np.arange(3), "ece": float("nan"), "runs": [{"k": np.int64(4)}]}
    report.write_json(path, data)
    assert json.loads(path.read_text()) == {"acc": 0.5, "counts": [0, 1, 2], "ece": None, "runs": [{"k": 4}]}
    with pytest.raises(TypeError):
        report.write_json(path, {"bad": object()})

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        report.write_json(path, {"acc": 0.9})
    # the failed writes left the earlier file whole and no temporary file behind
    assert json.loads(path.read_text())["acc"] == 0.5
    assert os.listdir(path.parent) == ["results.json"]


def test_markdown_table(tmp_path):
    rows = [{"method": "greedy", "acc": 0.5}, {"method": "CaT", "acc": 0.61234, "s/q": 2.8}]
    assert report.markdown_table(rows) == (
        "| method | acc | s/q |\n|---|---|---|\n| greedy | 0.5000 |  |\n| CaT | 0.6123 | 2.8000 |\n"
    )
    path = report.write_markdown(tmp_path / "results.md", rows, title="MATH500")
    assert path.read_text().startswith("# MATH500\n\n| method | acc | s/q |")


def test_plots_are_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=300)
    labels = rng.uniform(size=300) < conf
    paths = [
        report.plot_reliability(tmp_path / "reliability.png", conf, labels),
        report.plot_confidence_histograms(tmp_path / "hist.png", conf, labels),
        report.plot_confidence_histograms(tmp_path / "hist_one_class.png", conf[:5], np.ones(5)),
        report.plot_confidence_histograms(tmp_path / "hist_zoomed.png", 0.95 + conf / 20, labels, value_range=None),
        report.plot_accuracy_vs_budget(
            tmp_path / "budget.png",
            {"greedy": ([300], [0.5]), "self-consistency": ([3000, 1500, 600], [0.6, 0.58, 0.55]),
             "CaT": ([400, 800, 1200], [0.55, 0.6, 0.62])},
        ),
    ]
    assert all(_is_png(p) for p in paths)
    assert sorted(os.listdir(tmp_path)) == [
        "budget.png", "hist.png", "hist_one_class.png", "hist_zoomed.png", "reliability.png"
    ]
