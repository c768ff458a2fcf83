"""Orbax checkpoints: the train state pytree plus JSON-able host state (data iterator, counters).

Orbax writes each step into a temporary directory and renames it when complete, so a crash
mid-save never leaves a half-written checkpoint; a restart resumes from the latest finished one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Keep-last-k, optionally asynchronous, collective on multi-host runs."""

    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, host: dict | None = None, *, force: bool = False) -> None:
        if step in self._manager.all_steps():
            return  # a run's final save after a periodic one at the same step: already written
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  host=ocp.args.JsonSave(host or {}))
        self._manager.save(step, args=args, force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict]:
        """Restore into the shapes, dtypes and shardings of `abstract_state` (arrays or
        `jax.ShapeDtypeStruct`s)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint under {self.directory}; start without "
                                    f"resuming (run.resume=false) or point run.name at another run")
        target = jax.tree.map(_abstract, abstract_state)
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), host=ocp.args.JsonRestore()))
        return step, out.state, dict(out.host or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
