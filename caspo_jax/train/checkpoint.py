"""Orbax checkpoints of a run: train state, data-iterator state and config, the last N kept.

Each step directory holds three items: `state` (step, params, optimizer state: sharded arrays, each
host writing its shards), `data` (the grain iterator state, JSON) and `config` (the TrainConfig,
JSON). Saves are asynchronous and atomic: a step directory appears only once complete, so a run
killed mid-save restores from the previous one (the partial one is removed on resume). Restoring
places every array straight onto the shardings of the abstract state it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores (state, data state, config) under `directory`, keeping the last `keep`."""

    def __init__(self, directory: str | Path, keep: int) -> None:
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, config: dict) -> None:
        """Starts an asynchronous save of `state` (a pytree of arrays) at `step`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config)
        )
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, data state, config) of `step`; abstract_state: ShapeDtypeStructs with shardings."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()
        )
        restored = self._manager.restore(step, args=args)
        return restored.state, restored.data, restored.config

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        """Finishes pending saves (they hold good states), then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
