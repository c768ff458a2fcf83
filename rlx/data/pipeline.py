"""Checkpointable prompt streams over a list of records, the same on every process.

The grain pipeline runs over record *indices*: batches of indices are cheap to shuffle and
checkpoint (`get_state` / `set_state`), and records stay plain Python objects on the host.

In a multi-process job every process draws the same global batch: the RL step's host logic
(rollout bookkeeping, rewards, filtering) runs identically everywhere and the devices split
the work through the global mesh (see rlx.hostio), so a run on 2 processes x 2 devices draws
exactly the prompts of a run on 1 process x 4 devices.
"""

from __future__ import annotations

import grain
import numpy as np


class PromptStream:
    """Endless shuffled batches of records; every process gets the same batches."""

    def __init__(self, records: list, batch_size: int, *, seed: int = 0, shuffle: bool = True):
        if not records:
            raise ValueError("the prompt set is empty; check data.path / data.task")
        self.records = records
        ds = grain.MapDataset.range(len(records))
        if shuffle:
            ds = ds.shuffle(seed=seed)
        ds = ds.repeat(None).batch(batch_size)
        self._iter = iter(ds.to_iter_dataset())

    def next(self) -> list:
        return [self.records[int(i)] for i in np.asarray(next(self._iter))]

    def get_state(self) -> dict:
        return self._iter.get_state()

    def set_state(self, state: dict) -> None:
        self._iter.set_state(state)
