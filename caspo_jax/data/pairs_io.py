"""Reading and validating pair (or SFT) records from jsonl, parquet or a `datasets.Dataset`.

A pair record has string fields `prompt`, `chosen`, `rejected` and optionally a `weight` (a finite
number >= 0, default 1) and precomputed reference log-probs `ref_chosen_logps`/`ref_rejected_logps`.
SFT records need only `prompt` and `completion` (or `chosen`). Every problem is a ValueError that names
the file and line (jsonl) or row (parquet, Dataset) and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterable

from caspo_jax.data import jsonl

PAIR_FIELDS = ("prompt", "chosen", "rejected")
REF_FIELDS = ("ref_chosen_logps", "ref_rejected_logps")


@dataclasses.dataclass(frozen=True)
class PairRecord:
    prompt: str
    chosen: str  # the completion of an SFT record
    rejected: str | None  # None for SFT records
    weight: float
    ref_chosen_logps: float | None
    ref_rejected_logps: float | None
    where: str  # "file:line" or "file row i", for messages


def read_records(source: str | Path | Any, *, pairs: bool = True) -> list[PairRecord]:
    """All records of a .jsonl/.parquet file or a `datasets.Dataset`; `pairs=False` reads SFT records."""
    rows = _rows(source)
    records = [_record(row, where, pairs) for where, row in rows]
    name = source if isinstance(source, (str, Path)) else "dataset"
    if not records:
        raise ValueError(f"{name}: no records")
    with_ref = [r.ref_chosen_logps is not None for r in records]
    if any(with_ref) and not all(with_ref):
        missing = records[with_ref.index(False)].where
        raise ValueError(f"{missing}: {' and '.join(REF_FIELDS)} missing here but present in other records")
    return records


def _rows(source: str | Path | Any) -> Iterable[tuple[str, Any]]:
    if not isinstance(source, (str, Path)):
        return ((f"dataset row {i}", row) for i, row in enumerate(source))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"pair file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several unrelated types for a bad file
            raise ValueError(f"{path}: not a readable parquet file ({e})") from None
        return ((f"{path} row {i}", row) for i, row in enumerate(table.to_pylist()))
    if path.suffix in (".jsonl", ".json"):
        return jsonl.records(path)
    raise ValueError(f"{path}: expected a .jsonl or .parquet file")


def _record(row: Any, where: str, pairs: bool) -> PairRecord:
    expected = "prompt, chosen, rejected" if pairs else "prompt and completion (or chosen)"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with {expected}, got {type(row).__name__}")
    completion_field = "chosen" if pairs or "completion" not in row else "completion"
    fields = ("prompt", completion_field) + (("rejected",) if pairs else ())
    for field in fields:
        if field not in row or row[field] is None:
            raise ValueError(f"{where}: missing field {field!r} (expected {expected}, optionally weight)")
        if not isinstance(row[field], str):
            raise ValueError(f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}")
        if not row[field]:
            raise ValueError(f"{where}: field {field!r} is empty")
    weight = _number(row, "weight", where, default=1.0)
    if weight < 0:
        raise ValueError(f"{where}: field 'weight' must be >= 0, got {weight}")
    refs = [_number(row, field, where, default=None) for field in REF_FIELDS] if pairs else [None, None]
    if (refs[0] is None) != (refs[1] is None):
        raise ValueError(f"{where}: give both {' and '.join(REF_FIELDS)} or neither")
    return PairRecord(
        prompt=row["prompt"],
        chosen=row[completion_field],
        rejected=row["rejected"] if pairs else None,
        weight=weight,
        ref_chosen_logps=refs[0],
        ref_rejected_logps=refs[1],
        where=where,
    )


def _number(row: dict, field: str, where: str, default: float | None) -> float | None:
    value = row.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: field {field!r} must be a finite number, got {value!r}")
    return float(value)
