"""Checkpointable prompt streams over a list of records, read in shards and gathered.

The grain pipeline runs over record *indices*: batches of indices are cheap to shuffle, shard
and checkpoint (`get_state` / `set_state`), and records stay plain Python objects on the host.

In a multi-process job process p draws indices p, p + P, p + 2P, ... of the shuffled order
(its shard of each step), and the step's index batches are then all-gathered and interleaved,
so every process ends up with the same global batch -- exactly the one a single process draws.
The RL step's host logic (rollout bookkeeping, rewards, filtering) then runs identically
everywhere and the devices split the work through the global mesh (see rlx.hostio).
"""

from __future__ import annotations

import grain
import jax
import numpy as np

from rlx import hostio


def global_order(shards_PxB: np.ndarray) -> np.ndarray:
    """The step's indices in global order from the processes' shards (row p = process p's):
    column j holds global positions j P .. j P + P - 1, so read it column by column."""
    return np.asarray(shards_PxB).T.reshape(-1)


class PromptStream:
    """Endless shuffled batches of records: each process reads its shard of a step's batch, and
    `next()` returns the whole (gathered) batch on every process."""

    def __init__(self, records: list, batch_size: int, *, seed: int = 0, shuffle: bool = True):
        if not records:
            raise ValueError("the prompt set is empty; check data.path / data.task")
        self.count, index = jax.process_count(), jax.process_index()
        if batch_size % self.count:
            raise ValueError(f"trainer.prompts_per_step={batch_size} must divide evenly over the "
                             f"{self.count} processes, which each read a share of every step's prompts")
        self.records = records
        ds = grain.MapDataset.range(len(records))
        if shuffle:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat(None)[index::self.count].batch(batch_size // self.count)
        self._iter = iter(ds.to_iter_dataset())

    def next(self) -> list:
        local = np.asarray(next(self._iter), np.int64)
        order = global_order(hostio.gather_host(local)) if self.count > 1 else local
        return [self.records[int(i)] for i in order]

    def get_state(self) -> dict:
        return self._iter.get_state()

    def set_state(self, state: dict) -> None:
        self._iter.set_state(state)
