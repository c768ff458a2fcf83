"""Scoring for evaluation: pass@k, maj@k and their aggregation over problems.

Pure Python and NumPy over per-sample verdicts, so every number in a results table can be
checked by hand without a model.

    pass_at_k(n=4, c=1, k=2)                                -> 0.5
    majority_vote(["4", None, "3", "3.0"], equivalent)      -> 2   ({"3", "3.0"} beats {"4"})
    majority_vote(["4", None, "3", "3.0"])                  -> 0   (string equality: a 3-way tie)

pass@k is the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models
Trained on Code": with c correct among n samples, 1 - C(n-c, k) / C(n, k), the chance that a
random k-subset holds a correct sample.

maj@k is majority voting over extracted answers:
  - answers cluster greedily in sample order: each answer joins the first cluster whose
    representative (first member) it is `equal` to, else it starts a new cluster -- so a
    non-transitive equality (math equivalence with rounding) still gives one clustering;
  - unextractable answers (None) do not vote; when no sample has an answer the vote is wrong;
  - the largest cluster wins; ties go to the cluster whose first member came first;
  - the vote is correct when its representative sample was judged correct.
With n samples, maj@k averages the vote over the floor(n / k) disjoint blocks of k consecutive
samples (samples are i.i.d., so each block is an independent k-sample vote; k = n is one
vote over everything). Samples past the last full block do not count towards maj@k.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

Equal = Callable[[str, str], bool]
TRUNCATED = "length"


@dataclass(frozen=True)
class Scored:
    """One response after checking: verdict, extracted answer, length in tokens, finish reason."""

    correct: bool
    answer: str | None
    length: int
    finish_reason: str


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from c correct out of n samples (Chen et al. 2021, numerically stable)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i): no huge binomials.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def majority_vote(answers: Sequence[str | None], equal: Equal = operator.eq) -> int | None:
    """Index of the winning cluster's first member, or None when no answer was extracted.

    `equal(representative, answer)` is called with the earlier answer first (math
    equivalence is checked reference-first).
    """
    reps: list[int] = []  # first member of each cluster, in order of appearance
    sizes: list[int] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for j, rep in enumerate(reps):
            if equal(answers[rep], answer):
                sizes[j] += 1
                break
        else:
            reps.append(i)
            sizes.append(1)
    if not reps:
        return None
    # max() returns the first maximal cluster: the tie-break by first occurrence.
    return reps[max(range(len(reps)), key=sizes.__getitem__)]


def maj_at_k(samples: Sequence[Scored], k: int, equal: Equal = operator.eq) -> float:
    """Mean majority-vote correctness over the disjoint blocks of k samples (see module doc)."""
    blocks = len(samples) // k
    if k < 1 or blocks == 0:
        raise ValueError(f"maj@{k} needs 1 <= k <= number of samples ({len(samples)})")
    wins = 0
    for b in range(blocks):
        block = samples[b * k:(b + 1) * k]
        winner = majority_vote([s.answer for s in block], equal)
        if winner is not None and block[winner].correct:
            wins += 1
    return wins / blocks


def aggregate(problems: Sequence[Sequence[Scored]], ks: Sequence[int] = (1,), *,
              majority: bool = True, equal: Equal = operator.eq) -> dict[str, float]:
    """Dataset metrics from each problem's samples (every problem has the same n).

    Returns pass@k (and maj@k with `majority`) averaged over problems, plus response
    statistics over all samples: mean length in tokens, truncation rate (finish reason
    "length") and answer rate (an answer could be extracted).
    """
    if not problems:
        raise ValueError("no problems to aggregate")
    n = len(problems[0])
    if any(len(p) != n for p in problems) or n == 0:
        raise ValueError(f"every problem needs the same number (>= 1) of samples; got "
                         f"{sorted({len(p) for p in problems})}")
    out: dict[str, float] = {"problems": len(problems), "n": n}
    for k in ks:
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, sum(s.correct for s in p), k) for p in problems]))
    if majority:
        for k in ks:
            out[f"maj@{k}"] = float(np.mean([maj_at_k(p, k, equal) for p in problems]))
    flat = [s for p in problems for s in p]
    out["mean_response_len"] = float(np.mean([s.length for s in flat]))
    out["truncation_rate"] = float(np.mean([s.finish_reason == TRUNCATED for s in flat]))
    out["answer_rate"] = float(np.mean([s.answer is not None for s in flat]))
    return out
