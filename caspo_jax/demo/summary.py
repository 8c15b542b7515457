"""The demo's report: report.json, report.md, the plots, and the table printed at the end.

Everything here is computed from the stage files (steps/<model>/, decoders/<model>/<method>/,
caspo/round_1/), so rewriting the report of a finished run costs seconds and gives the same numbers;
only the "seconds" entry (wall time of this invocation) differs between runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from caspo_jax import files
from caspo_jax.caspo import dataset as dataset_lib
from caspo_jax.demo.settings import DemoSettings
from caspo_jax.eval import report

STEP_FIGURES = (  # (key in step_eval.step_metrics, label, which way is better)
    ("auroc", "AUROC of step confidence vs step correctness", "up"),
    ("ece", "ECE of step confidence", "down"),
    ("brier", "Brier score of step confidence", "down"),
    ("confidence_gap", "confidence gap, right minus wrong steps", "up"),
    ("step_accuracy", "step accuracy", "up"),
    ("final_accuracy", "final-answer accuracy", "up"),
    ("right_through_wrong_step", "right answers reached through a wrong step", "down"),
    ("reliable_accuracy", "reliable accuracy (right answer, every step right)", "up"),
)
DECODER_NAMES = {"greedy": "greedy", "sc": "self-consistency", "cat": "CaT"}


def decoder_figures(metrics: Mapping) -> dict:
    """accuracy, tokens per question and trace-level calibration of one decoder's metrics.json."""
    return {"accuracy": metrics["accuracy"], "tokens_per_question": metrics["tokens"]["mean"],
            "trace_ece": metrics["ece"], "trace_auroc": metrics["auroc"]}


def build(s: DemoSettings, caspo_summary: Mapping, results: Mapping[str, Mapping]) -> dict:
    """report.json's content (without the wall time)."""
    models = list(results)
    steps = {m: {k: results[m]["steps"][k] for k, _, _ in STEP_FIGURES} for m in models}
    decoders = {m: {d: decoder_figures(results[m][d]) for d in DECODER_NAMES} for m in models}
    verdicts = {k: _verdict(steps["base"][k], steps["caspo"][k], way) for k, _, way in STEP_FIGURES}
    return {"settings": s.to_dict(), "pairs": caspo_summary["pairs"], "step_level": steps, "decoders": decoders,
            "caspo_vs_base": verdicts}


def _verdict(before: float, after: float, way: str) -> str:
    if after == before:
        return "same"
    return "better" if (after > before) == (way == "up") else "worse"


def table_rows(data: Mapping) -> list[dict]:
    """One row per figure: base, CASPO, SFT control and CASPO's direction against base."""
    rows = []
    for key, label, _ in STEP_FIGURES:
        row = {"figure (held-out, sampled at T=1)": label}
        row |= {m: data["step_level"][m][key] for m in data["step_level"]}
        rows.append(row | {"CASPO vs base": data["caspo_vs_base"][key]})
    for d, name in DECODER_NAMES.items():
        for key, label in (("accuracy", "accuracy"), ("tokens_per_question", "tokens/question")):
            row = {"figure (held-out, sampled at T=1)": f"{name}: {label}"}
            rows.append(row | {m: data["decoders"][m][d][key] for m in data["decoders"]})
    return rows


def _plots(out: Path, data: Mapping) -> list[str]:
    names = []
    steps = {model: dataset_lib.read_parquet(out / "steps" / model / "annotated.parquet") for model in data["step_level"]}
    everything = [r["step_confidence"] for rows in steps.values() for r in rows]
    low = float(min(np.floor(np.quantile(everything, 0.01) * 50) / 50, 0.98)) if everything else 0.0
    for model, rows in steps.items():
        conf, right = [r["step_confidence"] for r in rows], [r["label"] for r in rows]
        report.plot_reliability(out / f"reliability_{model}.png", conf, right, title=f"{model}: step confidence")
        report.plot_confidence_histograms(out / f"confidence_hist_{model}.png", conf, right, value_range=(low, 1.0),
                                          title=f"{model}: step confidence, right vs wrong steps")
        names += [f"reliability_{model}.png", f"confidence_hist_{model}.png"]
    curves = {f"{model} {DECODER_NAMES[d]}": ([v["tokens_per_question"]], [v["accuracy"]])
              for model, decoders in data["decoders"].items() for d, v in decoders.items()}
    report.plot_accuracy_vs_budget(out / "accuracy_vs_tokens.png", curves, title="Held-out accuracy against tokens")
    return names + ["accuracy_vs_tokens.png"]


def write(out: Path, s: DemoSettings, caspo_summary: Mapping, results: Mapping, seconds: float) -> dict:
    """Writes report.json, report.md and the plots into `out`, prints the table; returns the report."""
    data = build(s, caspo_summary, results)
    plots = _plots(out, data)
    rows = table_rows(data)
    text = (f"# caspo-jax demo (seed {s.seed}{', fast' if s.fast else ''})\n\n"
            f"CASPO pairs: {data['pairs']['pairs']} ({', '.join(f'{k}={v}' for k, v in data['pairs'].items())})\n\n"
            + report.markdown_table(rows) + "\n" + "".join(f"![{p}]({p})\n" for p in plots))
    report.write_json(out / "report.json", {**data, "plots": plots, "seconds": seconds})
    files.write_text(out / "report.md", text)
    print(report.markdown_table(rows))
    return data
