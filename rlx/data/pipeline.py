"""Checkpointable prompt streams over a list of records, sharded per process.

The grain pipeline runs over record *indices*: batches of indices are cheap to shuffle, shard
and checkpoint (`get_state` / `set_state`), and records stay plain Python objects on the host.
"""

from __future__ import annotations

import grain
import jax
import numpy as np


class PromptStream:
    """Endless shuffled batches of records; each process sees its own disjoint share."""

    def __init__(self, records: list, batch_size: int, *, seed: int = 0, shuffle: bool = True):
        if not records:
            raise ValueError("the prompt set is empty; check data.path / data.task")
        count, index = jax.process_count(), jax.process_index()
        if batch_size % count:
            raise ValueError(f"prompts per step ({batch_size}) must divide evenly over "
                             f"{count} processes")
        self.records = records
        ds = grain.MapDataset.range(len(records))
        if shuffle:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat(None)[index::count].batch(batch_size // count)
        self._iter = iter(ds.to_iter_dataset())

    def next(self) -> list:
        return [self.records[int(i)] for i in np.asarray(next(self._iter))]

    def get_state(self) -> dict:
        return self._iter.get_state()

    def set_state(self, state: dict) -> None:
        self._iter.set_state(state)
