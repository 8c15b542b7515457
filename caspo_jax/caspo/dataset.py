"""The step-wise dataset with confidence annotations: one row per (round, question, sample, step).

Rows hold the step's text, its [start, end) token span in the sample, the per-token confidences, the
step confidence, the label and which labeler gave it. `write_parquet` writes one table atomically;
`publish` assembles a Hugging Face dataset folder (data/*.parquet + README.md card) that

    datasets.load_dataset("parquet", data_files=str(folder / "data" / "*.parquet"))

or `datasets.load_dataset(str(folder))` (the card's `configs` entry) loads.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("round", pa.int32()),
    ("question_id", pa.string()),
    ("question", pa.string()),
    ("reference", pa.string()),
    ("sample", pa.int32()),
    ("step_index", pa.int32()),
    ("text", pa.string()),
    ("token_start", pa.int32()),
    ("token_end", pa.int32()),
    ("token_confidences", pa.list_(pa.float32())),
    ("step_confidence", pa.float32()),
    ("label", pa.bool_()),
    ("labeler", pa.string()),
])

CARD = """---
license: apache-2.0
task_categories:
- text-generation
tags:
- reasoning
- calibration
- caspo
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*.parquet
---
# Step-wise confidence annotations (CASPO)

Sampled solutions split into reasoning steps, each with its token confidences, step confidence and
a correctness label, as used to build CASPO's confidence-filtered step pairs
("Confidence-Aware Alignment Makes Reasoning LLMs More Reliable", arXiv 2605.07353).
Written by caspo-jax.

- rows: {rows} steps of {samples} samples of {questions} questions, rounds {rounds}
- token confidence: `{signal}` (entropy_conf is 1 - H / log V of the next-token distribution)
- step confidence: the {aggregation} of the step's token confidences
- labeler: {labelers}

## Fields
| field | meaning |
|---|---|
| round | CASPO round whose policy sampled the solution (1-based; 0 = `caspo-jax annotate`) |
| question_id, question, reference | the question and its reference final answer |
| sample | which of the question's samples |
| step_index | the step's position in the solution (0-based) |
| text | the step's text (stripped) |
| token_start, token_end | the step's [start, end) token indices in the sample's generated tokens |
| token_confidences | the confidence of each of those tokens |
| step_confidence | the step's confidence |
| label | true when the labeler judged the step right |
| labeler | verifier, judge or outcome |

```python
import datasets
ds = datasets.load_dataset("parquet", data_files="data/*.parquet")["train"]
```
"""


def write_parquet(rows: Sequence[dict], path: Path) -> Path:
    """The rows (SCHEMA's fields) as one parquet file, written to a temp file and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(list(rows), schema=SCHEMA)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_parquet(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def write_card(folder: Path, rows: Sequence[dict], *, signal: str, aggregation: str) -> None:
    """The dataset card (README.md) describing `rows`, written atomically into `folder`."""
    card = CARD.format(
        rows=len(rows),
        samples=len({(r["round"], r["question_id"], r["sample"]) for r in rows}),
        questions=len({r["question_id"] for r in rows}),
        rounds=", ".join(str(x) for x in sorted({r["round"] for r in rows})) or "none",
        signal=signal, aggregation=aggregation,
        labelers=", ".join(sorted({r["labeler"] for r in rows})) or "none",
    )
    tmp = folder / f".README.md.{uuid.uuid4().hex[:8]}"
    tmp.write_text(card)
    os.replace(tmp, folder / "README.md")


def publish(folder: Path, tables: Sequence[Path], *, signal: str, aggregation: str) -> Path:
    """A dataset folder (data/<name>.parquet per table + README.md card), swapped in atomically."""
    folder = Path(folder)
    rows = [r for t in tables for r in read_parquet(t)]
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "data").mkdir(parents=True)
    try:
        for table in tables:
            shutil.copy2(table, tmp / "data" / f"{table.parent.name}.parquet")
        write_card(tmp, rows, signal=signal, aggregation=aggregation)
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
