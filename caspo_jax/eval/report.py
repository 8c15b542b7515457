"""Evaluation reports: JSON results, a markdown table, and PNG plots.

Everything takes plain dicts, lists and arrays, so any pipeline (CaT runs, CASPO rounds, baselines)
can call it. Every file is written to a temporary path in the same folder and renamed into place
(`os.replace`), so a crash never leaves a half-written report; in a multi-host job only process 0
writes (`files.is_primary`), the others return the same path. Plots use matplotlib's object API on
the Agg canvas: no pyplot, no global backend change, safe without a display.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from caspo_jax import files
from caspo_jax.eval.metrics import N_BINS, reliability_bins


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and paths as JSON values; non-finite floats as null."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """`data` as indented JSON (numpy values converted, NaN/inf as null), written atomically."""
    text = json.dumps(_plain(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    if not files.is_primary():
        return Path(path)
    return files.atomic_write(path, lambda f: f.write(text))


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}" if math.isfinite(value) else "n/a"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table, one row per mapping; columns default to the keys in first-seen
    order, missing cells are empty, floats get 4 decimals."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_markdown(
    path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    title: str | None = None,
    columns: Sequence[str] | None = None,
) -> Path:
    """A markdown file holding an optional "# title" and `markdown_table(rows, columns)`."""
    text = (f"# {title}\n\n" if title else "") + markdown_table(rows, columns)
    if not files.is_primary():
        return Path(path)
    return files.atomic_write(path, lambda f: f.write(text))


def _save(fig: Figure, path: str | Path) -> Path:
    if not files.is_primary():
        return Path(path)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")


def plot_reliability(
    path: str | Path,
    confidence: ArrayLike,
    labels: ArrayLike,
    n_bins: int = N_BINS,
    title: str = "Reliability diagram",
) -> Path:
    """Reliability diagram: per equal-width bin, accuracy (bars) against mean confidence, with the
    diagonal of perfect calibration. confidence, labels: [M]."""
    bins = reliability_bins(confidence, labels, n_bins)
    edges, filled = bins["edges"], bins["count"] > 0
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.bar(edges[:-1][filled], bins["accuracy"][filled], width=1.0 / n_bins, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "o", color="C3", label="bin mean")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_confidence_histograms(
    path: str | Path,
    confidence: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 30,
    title: str = "Step confidence",
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> Path:
    """Overlaid density histograms of step confidence [S] for correct and wrong steps (labels [S]);
    a class without steps is left out of the plot. value_range None zooms on the data: from its 1st
    percentile (rounded down to 0.02) to 1, for models whose confidences crowd near 1."""
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).astype(bool).reshape(-1)
    if value_range is None:
        low = np.floor(np.quantile(conf, 0.01) * 50) / 50 if conf.size else 0.0
        value_range = (float(min(low, 0.98)), 1.0)
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.add_subplot()
    for mask, name, color in ((lab, "correct", "C2"), (~lab, "wrong", "C3")):
        if mask.any():
            ax.hist(np.clip(conf[mask], *value_range), bins=n_bins, range=value_range, density=True, alpha=0.55,
                    color=color, label=f"{name} steps (n={int(mask.sum())})")
    ax.set(xlim=value_range, xlabel="confidence", ylabel="density", title=title)
    ax.legend()
    return _save(fig, path)


def plot_accuracy_vs_budget(
    path: str | Path,
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    xlabel: str = "tokens per question",
    title: str = "Accuracy against token budget",
) -> Path:
    """One line per method: curves maps a method name to (budgets [P], accuracies [P])."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    for name, (budget, accuracy) in curves.items():
        b, a = np.asarray(budget, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
        order = np.argsort(b)
        ax.plot(b[order], a[order], "o-", label=name)
    ax.set(xlabel=xlabel, ylabel="accuracy", title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    return _save(fig, path)
