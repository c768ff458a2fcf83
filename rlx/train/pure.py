"""PURE in the RL loop: min-form credit assignment on the implicit PRM's step scores
(ALGORITHMS.md section 6; kernels in `rlx.kernels.pure`).

Each step:
  1. rollouts and verifier accuracy; the PRM (PRIME's implicit PRM: a causal LM initialised
     from the starting actor, its frozen reference, its online BCE update -- the `prime`
     section) is updated and scores the responses: q_t = log pi_phi(y_t) - log pi_ref(y_t);
  2. each response is split into steps after every `pure.separators` occurrence and at its
     end; step k ends on token e_k;
  3. step score PR_k in [-1, 1]: "prefix" = 2 sigmoid(beta Q(e_k)) - 1 with Q(e) = sum_{t<=e} q_t,
     the implicit PRM's probability that the solution is right so far, mapped to [-1, 1];
     "step" = the same on step k's own tokens;
  4. min-form rewards r_k = softmax_k(-PR / T)_k PR_k (or PR_k for weighting=sum) on e_k,
     RLOO baseline (step or token level), verifiable reward correct - 1 in {-1, 0} RLOO-centred
     at EOS times vr_coef, reverse cumsum, global whitening; then the ordinary actor update.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from rlx.kernels import ADVANTAGE_FNS
from rlx.kernels.prime import implicit_q
from rlx.kernels.pure import min_form_step_rewards, scatter_step_rewards
from rlx.train.prime import PrimeTrainer
from rlx.train.trainer import RLTrainer, StepBatch


def split_steps(token_texts: list[str], separators: tuple[str, ...], max_steps: int) -> list[int]:
    """Indices of the tokens that end each step: the token completing a separator, and the last
    token. Past `max_steps`, the remaining text is one final step."""
    if not token_texts:
        return []
    text, owner = "", []
    for i, piece in enumerate(token_texts):
        text += piece
        owner.extend([i] * len(piece))
    ends = set()
    for sep in separators:
        start = text.find(sep)
        while start >= 0:
            ends.add(owner[start + len(sep) - 1])
            start = text.find(sep, start + len(sep))
    last = len(token_texts) - 1
    ends = sorted(e for e in ends if e < last)[:max_steps - 1]
    return ends + [last]


def step_ends(tokenizer, response_ids: np.ndarray, response_mask: np.ndarray,
              separators: tuple[str, ...], max_steps: int) -> np.ndarray:
    """step_end_BxK (K = max_steps) for a batch of right-padded responses; -1 = no step."""
    pieces: dict[int, str] = {}
    out = np.full((len(response_ids), max_steps), -1, np.int32)
    for b, (ids, m) in enumerate(zip(response_ids, response_mask)):
        toks = ids[m.astype(bool)].tolist()
        texts = [pieces.setdefault(t, tokenizer.decode([t])) for t in toks]
        ends = split_steps(texts, separators, max_steps)
        out[b, :len(ends)] = ends
    return out


def step_scores(q_BxR: np.ndarray, ends_BxK: np.ndarray, *, beta: float, kind: str) -> np.ndarray:
    """PR_BxK in [-1, 1] from the implicit PRM's token values (0 where there is no step)."""
    valid = ends_BxK >= 0
    cum = np.cumsum(q_BxR, axis=1)
    at_end = np.where(valid, np.take_along_axis(cum, np.maximum(ends_BxK, 0), axis=1), 0.0)
    if kind == "step":
        before = np.concatenate([np.zeros_like(at_end[:, :1]), at_end[:, :-1]], axis=1)
        at_end = at_end - before
    return np.where(valid, np.tanh(0.5 * beta * at_end), 0.0)  # 2 sigmoid(x) - 1 = tanh(x / 2)


class PureTrainer(PrimeTrainer):
    """PrimeTrainer's PRM role with PURE's credit assignment and without PRIME's prompt filter."""

    estimators = ("pure",)

    def _sampling_rounds(self) -> int:
        return RLTrainer._sampling_rounds(self)

    def _keep_groups(self, sb: StepBatch) -> np.ndarray:
        if np.isnan(sb.correct).any():
            raise ValueError("PURE trains its implicit PRM on the verifier's accuracy, but some prompts "
                             "have no gold answer; set data.answer_field to the answer column")
        return RLTrainer._keep_groups(self, sb)

    def _advantages(self, sb: StepBatch, old_logp, ref_logp, resp_mask) -> np.ndarray:
        del ref_logp
        t0 = time.perf_counter()
        cfg, pu = self.cfg, self.cfg.pure
        logp_prm, prm_ref, acc, metrics = self._score_with_prm(sb, old_logp, resp_mask)
        q = np.asarray(implicit_q(logp_prm, prm_ref, resp_mask), np.float64)
        ends = step_ends(self.tokenizer, sb.response_ids, resp_mask, pu.separators, pu.max_steps)
        pr = step_scores(q, ends, beta=cfg.prime.beta, kind=pu.step_score)
        rewards = min_form_step_rewards(pr, ends >= 0, temperature=pu.temperature,
                                        weighted=pu.weighting == "min")
        token_r, end_mask = scatter_step_rewards(rewards, ends, resp_mask.shape[1])
        adv, _ = ADVANTAGE_FNS["pure"](
            mask_BxL=jnp.asarray(resp_mask), group_ids_B=jnp.asarray(sb.group_ids), token_rewards_BxL=token_r,
            step_end_mask_BxL=end_mask, scores_B=jnp.asarray(acc - 1.0) if pu.vr_coef else None,
            vr_coef=pu.vr_coef, zero_step_ends=pu.zero_step_ends, baseline=pu.baseline)
        real = (sb.group_ids >= 0) & (resp_mask.sum(1) > 0)
        steps = (ends >= 0).sum(1)
        pr_min = np.where(ends >= 0, pr, np.inf).min(1)
        metrics.update({
            "pure/steps_mean": float(steps[real].mean()) if real.any() else 0.0,
            "pure/step_score_mean": float((pr.sum(1) / np.maximum(steps, 1))[real].mean()) if real.any() else 0.0,
            "pure/min_step_score_mean": float(pr_min[real].mean()) if real.any() else 0.0,
            "pure/process_reward_mean": float(np.asarray(rewards).sum(1)[real].mean()) if real.any() else 0.0,
            "time/prm": time.perf_counter() - t0,
        })
        self._prm_metrics = metrics
        return np.asarray(adv) * resp_mask
