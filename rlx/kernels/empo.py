"""EMPO: label-free semantic-entropy minimisation (ALGORITHMS.md section 5).

Answer extraction and equivalence live on the host (rlx.rewards); `cluster_answers` turns a
group's answers into cluster ids, and the jitted kernels take those ids.
"""

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from rlx.kernels.advantages import group_segments, group_size, grpo


def cluster_answers(answers: Sequence[str], equivalent: Callable[[str, str], bool]) -> list[int]:
    """Greedy clustering of one group's answers: each answer joins the first cluster whose
    first member it is equivalent to, else opens a new one. Empty answers (nothing extracted)
    are always singletons, so they never inflate a cluster. Ids are 0, 1, ... in order of
    first appearance.
    """
    reps: list[str] = []
    ids: list[int] = []
    for ans in answers:
        cid = None
        if ans != "":
            for k, rep in enumerate(reps):
                if rep != "" and equivalent(ans, rep):
                    cid = k
                    break
        if cid is None:
            reps.append(ans)
            cid = len(reps) - 1
        ids.append(cid)
    return ids


def empo_rewards(cluster_ids_B, group_ids_B, empty_B):
    """r_i = p_c(i) = |c(i)| / G if H_g < log G and the answer is non-empty, else 0.

    cluster_ids_B are per-group ids in [0, B) (from cluster_answers; B <= 46340 so that the
    (group, cluster) key fits int32); an empty answer counts as
    its own singleton cluster whatever its id. G is the group size (empty answers included).
    H_g < log G holds exactly when some cluster has two or more members, which is how it is
    tested here (no float comparison at the boundary). Returns (rewards_B, entropy_B) with the
    group's semantic entropy H_g on every row of the group (0 on padding rows).
    """
    seg_B, valid_B = group_segments(group_ids_B)
    nb = seg_B.shape[0]
    rows = jnp.arange(nb, dtype=jnp.int32)
    empty = jnp.asarray(empty_B, bool)
    cid = jnp.asarray(cluster_ids_B, jnp.int32)
    # One key per (group, cluster); negative keys make empties and padding rows singletons.
    key = jnp.where(valid_B & ~empty, seg_B * nb + cid, -1 - rows)
    _, key_seg = jnp.unique(key, size=nb, fill_value=jnp.iinfo(jnp.int32).max,
                            return_inverse=True)
    key_seg = key_seg.reshape(nb)
    count_B = jax.ops.segment_sum(jnp.ones(nb, jnp.float32), key_seg, num_segments=nb)[key_seg]
    g_B = group_size(group_ids_B)
    p_B = count_B / jnp.maximum(g_B, 1.0)
    # H = -sum_c p_c log p_c = -(1/G) sum_{i in g} log p_c(i).
    h_terms = jnp.where(valid_B, -jnp.log(jnp.where(valid_B, p_B, 1.0)), 0.0)
    entropy_B = jax.ops.segment_sum(h_terms, seg_B, num_segments=nb)[seg_B] / jnp.maximum(g_B, 1.0)
    max_count = jax.ops.segment_max(jnp.where(valid_B, count_B, 0.0), seg_B, num_segments=nb)
    confident = max_count[seg_B] > 1
    rewards = jnp.where(valid_B & ~empty & confident, p_B, 0.0)
    return rewards, jnp.where(valid_B, entropy_B, 0.0)


def entropy_from_rewards(rewards_B, group_ids_B):
    """A group's semantic entropy H_g back from its EMPO rewards, on every row (0 on padding).

    A non-empty answer in a confident group earns p_c(i); every other row is a singleton
    (p = 1/G) and earns 0 -- so H_g = -(1/G) sum_{i in g} log max(r_i, 1/G), exactly. This lets
    the trainer filter on H_g with only the rewards, which come back from reward workers.
    """
    seg_B, valid_B = group_segments(group_ids_B)
    g_B = jnp.maximum(group_size(group_ids_B), 1.0)
    p_B = jnp.maximum(jnp.asarray(rewards_B, jnp.float32), 1.0 / g_B)
    terms = jnp.where(valid_B, -jnp.log(p_B), 0.0)
    entropy_B = jax.ops.segment_sum(terms, seg_B, num_segments=seg_B.shape[0])[seg_B] / g_B
    return jnp.where(valid_B, entropy_B, 0.0)


def empo_advantages(rewards_B, mask_BxL, group_ids_B, *, epsilon=1e-4):
    """(r - mean_g) / (std_g + 1e-4), unbiased std, broadcast over the response tokens."""
    return grpo(rewards_B, mask_BxL, group_ids_B, epsilon=epsilon)


def entropy_band_keep(entropy_B, group_ids_B, *, low=0.0, high=math.inf):
    """Optional prompt filter: keep groups with low <= H_g <= high (inclusive); no padding rows."""
    h = jnp.asarray(entropy_B, jnp.float32)
    return (jnp.asarray(group_ids_B) >= 0) & (h >= low) & (h <= high)
