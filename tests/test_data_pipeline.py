"""The prompt stream's per-process shards gather back into the single-process batch."""

import numpy as np

from rlx.data import pipeline


def test_shards_gather_into_the_global_batch(monkeypatch):
    records = [f"r{i}" for i in range(37)]
    single = pipeline.PromptStream(records, 8, seed=3)
    want = [single.batch(k) for k in range(6)]  # crosses an epoch boundary (37 records)

    streams = []
    for p in range(2):  # two processes, each reading its own shard
        monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
        monkeypatch.setattr(pipeline.jax, "process_index", lambda p=p: p)
        streams.append(pipeline.PromptStream(records, 8, seed=3))
    for step in range(6):
        local = [np.asarray(s._batches[step], np.int64) for s in streams]
        assert all(len(x) == 4 for x in local)
        assert not set(local[0]) & set(local[1]) or step >= 4  # disjoint shards within an epoch
        order = pipeline.global_order(np.stack(local))  # what hostio.gather_host returns
        assert [records[i] for i in order] == want[step]
