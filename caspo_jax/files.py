"""Files written whole or not at all: a temp file beside the target, then `os.replace`.

Every writer of reports, records and configs goes through here, so a crash never leaves a
half-written file where a finished one is expected (a rerun then skips or redoes it cleanly).
In a multi-host job every process runs the same program; `is_primary` names the one that writes
shared outputs (reports, records, exports), the others compute alongside it and skip the write.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Calls write(file) on a temp file beside `path`, then renames it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def is_primary() -> bool:
    """True in a single-process run and on process 0 of a multi-host JAX job: the writer of shared files.

    Never initialises a JAX backend (that must wait for `jax.distributed.initialize`): before the
    distributed runtime is up, the process is on its own and writes.
    """
    jax = sys.modules.get("jax")
    return jax is None or not jax.distributed.is_initialized() or jax.process_index() == 0
