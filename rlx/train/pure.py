"""PURE as an objective: min-form credit assignment on a PRM's step scores (ALGORITHMS.md
section 6; kernels in `rlx.kernels.pure`). The PRM role is PRIME's implicit PRM
(`pure.prm=implicit`, with the `prime` section's beta, prm_lr, reference and update) or a frozen
classifier-head PRM (`pure.prm=classifier`, `rlx.models.prm`), which gives
PR_k = p(positive) - p(negative) at step k's last token.

Each step:
  1. rollouts and verifier accuracy; the PRM role scores the responses (the implicit PRM is
     updated first): q_t = log pi_phi(y_t) - log pi_ref(y_t);
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

import jax.numpy as jnp
import numpy as np

from rlx.config import Config, ConfigError
from rlx.kernels import ADVANTAGE_FNS
from rlx.kernels.prime import implicit_q
from rlx.kernels.pure import min_form_step_rewards, scatter_step_rewards, step_scores_from_logits
from rlx.train.objectives import AdvantageInputs, Objective, register_objective


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


def step_rewards_to_advantages(cfg: Config, batch, mask_BxL, pr: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, dict]:
    """Step 4 of the module docstring, from step scores PR_BxK and step ends."""
    pu = cfg.pure
    acc = np.asarray(batch.correct, np.float32)
    labelled = ~np.isnan(acc)
    # PURE's headline runs have gold answers for a tenth of the problems: the verifiable reward
    # correct - 1 is given where there is one, and 0 elsewhere.
    vr = np.where(labelled, acc - 1.0, 0.0).astype(np.float32)
    rewards = min_form_step_rewards(pr, ends >= 0, temperature=pu.temperature, weighted=pu.weighting == "min")
    token_r, end_mask = scatter_step_rewards(rewards, ends, mask_BxL.shape[1])
    adv, _ = ADVANTAGE_FNS["pure"](
        mask_BxL=jnp.asarray(mask_BxL), group_ids_B=jnp.asarray(batch.group_ids), token_rewards_BxL=token_r,
        step_end_mask_BxL=end_mask, scores_B=jnp.asarray(vr) if pu.vr_coef else None,
        vr_coef=pu.vr_coef, zero_step_ends=pu.zero_step_ends, baseline=pu.baseline)
    real = (batch.group_ids >= 0) & (mask_BxL.sum(1) > 0)
    steps = (ends >= 0).sum(1)
    pr_min = np.where(ends >= 0, pr, np.inf).min(1)

    def mean(x):
        return float(np.mean(x[real])) if real.any() else 0.0

    metrics = {"pure/steps_mean": mean(steps), "pure/step_score_mean": mean(pr.sum(1) / np.maximum(steps, 1)),
               "pure/min_step_score_mean": mean(pr_min),
               "pure/process_reward_mean": mean(np.asarray(rewards).sum(1)),
               "pure/labelled_fraction": mean(labelled.astype(np.float32))}
    return np.asarray(adv) * mask_BxL, metrics


def advantages(x: AdvantageInputs) -> tuple[np.ndarray, dict]:
    cfg, pu, mask = x.cfg, x.cfg.pure, x.mask_BxL
    if "step_logits" in x.prm:  # classifier PRM: its reading at each step's separator
        ends = x.prm["ends"]
        pr = np.where(ends >= 0, np.asarray(step_scores_from_logits(x.prm["step_logits"])), 0.0)
    else:  # implicit PRM: its value sums up to each step's end
        ends = step_ends(x.tokenizer, x.batch.response_ids, mask, pu.separators, pu.max_steps)
        q = np.asarray(implicit_q(x.prm["logp"], x.prm["ref_logp"], mask), np.float64)
        pr = step_scores(q, ends, beta=cfg.prime.beta, kind=pu.step_score)
    return step_rewards_to_advantages(cfg, x.batch, mask, pr, ends)


def check(cfg: Config) -> None:
    pu = cfg.pure
    if pu.prm == "classifier" and not pu.prm_path:
        raise ConfigError("pure.prm=classifier needs pure.prm_path: a PRM checkpoint directory")
    if cfg.algo.n < 2:
        raise ConfigError(f"PURE's RLOO baselines need algo.n >= 2 responses per prompt, got {cfg.algo.n}")


PURE = register_objective(Objective("pure", advantages, check=check, prm=lambda cfg: cfg.pure.prm))
