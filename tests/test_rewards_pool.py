"""The reward runner survives hung, raising and crashing reward functions.

Run: PYTHONPATH=. pytest -q tests/test_rewards_pool.py  (about 10 s)

The reward functions below live at module level so that worker processes can import them.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import time

import pytest

from rlx.rewards import RewardFn, RewardRunner, get_reward_fn
from rlx.rewards.workers import WorkerPool


def length_reward(prompts, responses, **_):
    return [float(len(r)) for r in responses]


def sleeps_forever(prompts, responses, **_):
    time.sleep(10**6)


def hangs_past_soft_limit(prompts, responses, **_):
    # Ignore the worker's soft alarm: only the parent's hard kill can end this one.
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(10**6)


def raises(prompts, responses, **_):
    raise RuntimeError("reward bug")


def segfaults(prompts, responses, **_):
    ctypes.string_at(0)


def exits(prompts, responses, **_):
    os._exit(3)


def wrong_length(prompts, responses, **_):
    return [1.0]


def not_finite(prompts, responses, **_):
    return [float("nan")] * len(responses)


def sleeps_if_marked(prompts, responses, **_):
    if any("SLOW" in r for r in responses):
        time.sleep(10**6)
    return [1.0] * len(responses)


def uses_answer(prompts, responses, *, answer, **_):
    return [1.0 if r == a else 0.0 for r, a in zip(responses, answer)]


PROMPTS = ["p0", "p1", "p2", "p3"]
RESPONSES = ["a", "bb", "ccc", "dddd"]


@pytest.mark.parametrize("bad,status", [
    (sleeps_forever, "timeout"), (hangs_past_soft_limit, "timeout"), (raises, "error"),
    (segfaults, "crash"), (exits, "crash"), (wrong_length, "error"), (not_finite, "error"),
])
def test_bad_reward_is_counted_and_falls_back(bad, status):
    with RewardRunner([RewardFn("len", length_reward, 2.0), RewardFn("bad", bad, 1.0)],
                      num_workers=2, timeout=1.0, fallback=-1.0, chunk_size=2, grace=0.5) as runner:
        start = time.monotonic()
        result = runner(PROMPTS, RESPONSES)
        assert time.monotonic() - start < 8.0  # bounded: two chunks, each at most limit + grace
        assert result.per_fn["len"] == [1.0, 2.0, 3.0, 4.0]
        assert result.per_fn["bad"] == [-1.0] * 4
        assert result.scores == [1.0, 3.0, 5.0, 7.0]
        assert result.counters == {"len/ok": 2, f"bad/{status}": 2}
        # The run goes on: the next batch is served by live (or replaced) workers.
        again = runner(PROMPTS, RESPONSES)
        assert again.per_fn["len"] == [1.0, 2.0, 3.0, 4.0]
        assert runner.counters[f"bad/{status}"] == 4


def test_one_hung_chunk_costs_only_its_rows():
    with RewardRunner([RewardFn("r", sleeps_if_marked)], num_workers=2, timeout=1.0,
                      chunk_size=1, grace=0.5) as runner:
        result = runner(PROMPTS, ["ok", "SLOW", "ok", "ok"])
        assert result.scores == [1.0, 0.0, 1.0, 1.0]
        assert result.counters == {"r/ok": 3, "r/timeout": 1}


def test_row_fields_chunked_and_partials():
    fns = [RewardFn("eq", uses_answer, chunk_size=0),
           RewardFn("math", get_reward_fn("math", boxed_required=True), 0.5)]
    with RewardRunner(fns, num_workers=1, timeout=30.0, chunk_size=3) as runner:
        result = runner(["q"] * 4, ["\\boxed{4}", "4", "\\boxed{5}", "x"], answer=["\\boxed{4}", "4", "4", "y"])
        assert result.per_fn["eq"] == [1.0, 1.0, 0.0, 0.0]
        assert result.per_fn["math"] == [1.0, 0.0, 0.0, 0.0]
        assert result.scores == [1.5, 1.0, 0.0, 0.0]


def test_unpicklable_fn_is_an_error_naming_the_fix(caplog):
    with RewardRunner([RewardFn("local", lambda p, r, **_: [0.0] * len(r))], num_workers=1) as runner:
        result = runner(PROMPTS, RESPONSES)
    assert result.counters == {"local/error": 1}
    assert "module level" in caplog.text


def test_in_process_mode_counts_errors():
    runner = RewardRunner([RewardFn("len", length_reward), RewardFn("bad", raises)], num_workers=0)
    result = runner(PROMPTS, RESPONSES)
    assert result.per_fn["bad"] == [0.0] * 4 and result.counters["bad/error"] == 1


def test_mismatched_batch_is_rejected():
    runner = RewardRunner([RewardFn("len", length_reward)], num_workers=0)
    with pytest.raises(ValueError, match="row field 'answer'"):
        runner(PROMPTS, RESPONSES, answer=["1"])


def test_worker_pool_replaces_killed_workers():
    with WorkerPool(1, grace=0.3) as pool:
        outs = pool.map(time.sleep, [(0.0,), (10**6,), (0.0,)], timeout=0.5)
        assert [o.status for o in outs] == ["ok", "timeout", "ok"]
        hard = pool.call(functools.partial(hangs_past_soft_limit, [], []), timeout=0.5)
        assert hard.status == "timeout" and pool.restarts == 1
        assert pool.call(length_reward, [], ["xyz"], timeout=5).value == [3.0]
