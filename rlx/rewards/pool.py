"""The reward runner: several weighted reward functions over a batch, in worker processes.

A reward function has the signature

    fn(prompts: list[str], responses: list[str], **row_fields) -> list[float]

where `row_fields` are the batch's other columns (e.g. `answer=[...]`), one value per row. The
runner splits the batch into chunks, runs every (function, chunk) call in a pool of worker
processes with a per-call time limit, and sums the functions' scores with their weights. A call
that hangs, raises, returns garbage or kills its process (segfault, `os._exit`) is logged and
counted, its rows get the `fallback` score, the worker is replaced, and the run goes on.

Functions travel to the workers by pickle: define them at module level of an importable module
(or wrap one in `functools.partial`); lambdas, closures and functions in `__main__` scripts
cannot be sent. `num_workers=0` runs everything in-process instead, without time limits -- for
debugging, and for functions that must see the trainer's state.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rlx.rewards.workers import Outcome, WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardFn:
    """One term of the reward: `weight * fn(...)`.

    `chunk_size` overrides the runner's; 0 sends the whole batch in one call (for rewards that
    look across responses, e.g. EMPO's semantic entropy over a group).
    """

    name: str
    fn: Callable
    weight: float = 1.0
    chunk_size: int | None = None


@dataclass(frozen=True)
class RewardResult:
    scores: list[float]  # weighted sum per row: what the advantage estimator sees
    per_fn: dict[str, list[float]]  # each function's unweighted scores (fallback where it failed)
    counters: dict[str, int] = field(default_factory=dict)  # this batch: "<name>/<status>" -> calls


class RewardRunner:
    """Runs reward functions with time limits; `counters` accumulates over the whole run."""

    def __init__(self, fns: Sequence[RewardFn], *, num_workers: int = 2, timeout: float = 10.0,
                 fallback: float = 0.0, chunk_size: int = 16, grace: float = 1.0):
        if not fns:
            raise ValueError("no reward functions given; pass at least one RewardFn")
        names = [f.name for f in fns]
        if len(set(names)) != len(names):
            raise ValueError(f"reward function names must be unique, got {names}")
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0 (0 = whole batch), got {chunk_size}")
        self.fns = tuple(fns)
        self.timeout = timeout
        self.fallback = fallback
        self.chunk_size = chunk_size
        self.counters: collections.Counter = collections.Counter()
        self._pool = WorkerPool(num_workers, grace=grace) if num_workers > 0 else None

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], **row_fields) -> RewardResult:
        n = len(responses)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts but {n} responses; pass one prompt per response")
        for key, column in row_fields.items():
            if len(column) != n:
                raise ValueError(f"row field {key!r} has {len(column)} values for {n} responses; "
                                 "pass one value per response (repeat a prompt's fields per sample)")
        calls = []  # (RewardFn, start, stop)
        for spec in self.fns:
            size = self.chunk_size if spec.chunk_size is None else spec.chunk_size
            size = size or max(n, 1)
            calls += [(spec, lo, min(lo + size, n)) for lo in range(0, n, size)]
        tasks = [(spec.fn, (list(prompts[lo:hi]), list(responses[lo:hi])),
                  {k: list(v[lo:hi]) for k, v in row_fields.items()}) for spec, lo, hi in calls]
        outcomes = self._run(tasks)

        per_fn = {spec.name: [self.fallback] * n for spec in self.fns}
        batch_counts: collections.Counter = collections.Counter()
        for (spec, lo, hi), outcome in zip(calls, outcomes):
            outcome = _checked(outcome, hi - lo)
            batch_counts[f"{spec.name}/{outcome.status}"] += 1
            if outcome.ok:
                per_fn[spec.name][lo:hi] = [float(x) for x in outcome.value]
            else:
                reason = (outcome.error.strip().splitlines() or [""])[0]
                log.warning("reward %r on rows %d:%d -> %s (scored %s): %s", spec.name, lo, hi,
                            outcome.status, self.fallback, reason)
        scores = [sum(spec.weight * per_fn[spec.name][i] for spec in self.fns) for i in range(n)]
        self.counters.update(batch_counts)
        return RewardResult(scores, per_fn, dict(batch_counts))

    def _run(self, tasks) -> list[Outcome]:
        if self._pool is not None:
            return self._pool.run(tasks, timeout=self.timeout)
        out = []
        for fn, args, kwargs in tasks:
            try:
                out.append(Outcome("ok", fn(*args, **kwargs)))
            except Exception as e:  # noqa: BLE001 -- a bad reward must not end the run
                out.append(Outcome("error", error=f"{type(e).__name__}: {e}"))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> "RewardRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _checked(outcome: Outcome, rows: int) -> Outcome:
    """A successful call must return `rows` finite numbers; anything else is an error."""
    if not outcome.ok:
        return outcome
    value = outcome.value
    try:
        scores = [float(x) for x in value]
    except (TypeError, ValueError):
        return Outcome("error", error=f"returned {type(value).__name__}, expected a list of {rows} floats")
    if len(scores) != rows:
        return Outcome("error", error=f"returned {len(scores)} scores for {rows} rows")
    if not all(math.isfinite(x) for x in scores):
        return Outcome("error", error=f"returned a non-finite score: {scores}")
    return Outcome("ok", scores)
