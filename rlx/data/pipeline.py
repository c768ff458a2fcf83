"""Checkpointable prompt streams over a list of records, read in shards and gathered.

The grain pipeline runs over record *indices*: batches of indices are cheap to shuffle, shard
and address by position (the run state keeps the count of batches drawn), and records stay
plain Python objects on the host.

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
    """Endless shuffled batches of records, addressed by index: `batch(k)` is the k-th batch of
    the shuffled, repeated order, so the stream's whole state is the count of batches drawn
    (kept in the run state). Each process reads its shard of the batch and `batch(k)` returns
    the whole (gathered) batch on every process -- a collective in a multi-process run."""

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
        self._batches = ds.repeat(None)[index::self.count].batch(batch_size // self.count)

    def batch(self, k: int) -> list:
        local = np.asarray(self._batches[k], np.int64)
        order = global_order(hostio.gather_host(local)) if self.count > 1 else local
        return [self.records[int(i)] for i in order]
