"""pass@k against brute-force enumeration, majority voting, maj@k blocks and aggregation.

Run: PYTHONPATH=. pytest -q tests/test_eval_metrics.py  (about a second)
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from rlx.eval_metrics import Scored, aggregate, maj_at_k, majority_vote, pass_at_k


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return np.float64(sum(any(i < c for i in s) for s in subsets)) / np.float64(len(subsets))


@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            want = _brute_pass_at_k(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(want, rel=1e-12, abs=1e-15), (n, c, k)


def test_pass_at_k_large_n_matches_exact_binomials():
    for n, c, k in [(64, 3, 8), (200, 17, 50), (1000, 1, 1), (128, 0, 16), (128, 128, 128)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12, abs=1e-15)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(n, c, k)


def test_majority_vote_ties_go_to_first_occurrence():
    assert majority_vote(["4", "5", "5", "4"]) == 0
    assert majority_vote(["5", "4", "4", "5"]) == 0
    assert majority_vote(["1", "2", "2", "3"]) == 1
    assert majority_vote(["1", "2", "3"]) == 0


def test_majority_vote_ignores_unextractable_answers():
    assert majority_vote([None, None, "7", None]) == 2
    assert majority_vote([None, "3", None, "4", "4"]) == 3
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_majority_vote_clusters_against_first_member():
    # A non-transitive equality: |a - b| <= 1. "2" joins "1"'s cluster, "3" does not (it is
    # compared with the representative "1"), so {1, 2} beats {3, 4}'s later tie.
    near = lambda a, b: abs(int(a) - int(b)) <= 1  # noqa: E731
    assert majority_vote(["1", "2", "3", "4"], near) == 0
    assert majority_vote(["3", "1", "2", "2"], near) == 0  # {3, 2, 2} vs {1}
    calls = []
    majority_vote(["a", "b"], lambda rep, x: calls.append((rep, x)) or False)
    assert calls == [("a", "b")]  # representative first: math equivalence is reference-first


def _s(correct, answer, length=10, reason="eos"):
    return Scored(correct, answer, length, reason)


def test_maj_at_k_averages_disjoint_blocks():
    samples = [_s(True, "1"), _s(False, "2"), _s(False, "2"), _s(False, None),
               _s(False, None), _s(False, None)]
    assert maj_at_k(samples, 1) == pytest.approx(1 / 6)
    # blocks [1, 2] -> tie -> "1" (correct); [2, None] -> "2"; [None, None] -> no vote
    assert maj_at_k(samples, 2) == pytest.approx(1 / 3)
    assert maj_at_k(samples, 3) == 0.0  # [1, 2, 2] -> "2"; [None] x 3 -> no vote
    assert maj_at_k(samples, 4) == 0.0  # one block [1, 2, 2, None]; the last two do not count
    assert maj_at_k(samples, 6) == 0.0
    with pytest.raises(ValueError, match="maj@7"):
        maj_at_k(samples, 7)


def test_aggregate_by_hand():
    problems = [
        [_s(True, "3", 4), _s(False, "2", 8, "length"), _s(True, "3", 6), _s(False, None, 10, "length")],
        [_s(False, None, 2), _s(False, None, 2), _s(False, "9", 2), _s(False, "9", 2)],
    ]
    out = aggregate(problems, (1, 2, 4))
    assert out["problems"] == 2 and out["n"] == 4
    assert out["pass@1"] == pytest.approx((0.5 + 0) / 2)
    assert out["pass@2"] == pytest.approx((5 / 6 + 0) / 2)
    assert out["pass@4"] == pytest.approx(0.5)
    assert out["maj@1"] == pytest.approx(0.25)
    assert out["maj@2"] == pytest.approx((1.0 + 0) / 2)  # [3, 2] -> 3; [3, None] -> 3
    assert out["maj@4"] == pytest.approx(0.5)
    assert out["mean_response_len"] == pytest.approx(36 / 8)
    assert out["truncation_rate"] == pytest.approx(2 / 8)
    assert out["answer_rate"] == pytest.approx(5 / 8)
    assert "maj@1" not in aggregate(problems, (1,), majority=False)


def test_aggregate_rejects_ragged_or_empty_input():
    with pytest.raises(ValueError, match="same number"):
        aggregate([[_s(True, "1")], [_s(True, "1"), _s(True, "1")]])
    with pytest.raises(ValueError, match="no problems"):
        aggregate([])
    with pytest.raises(ValueError, match="1 <= k <= n"):
        aggregate([[_s(True, "1")]], (2,), majority=False)
