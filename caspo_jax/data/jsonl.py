"""Reading JSON Lines files: one place that turns bad bytes and bad lines into errors naming them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


def records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed value) for each non-blank line; a line that is not UTF-8 or not JSON
    raises ValueError naming the file and line."""
    path = Path(path)
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not valid UTF-8 (byte offset {e.start} in the line)") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
