"""PRIME as an objective: implicit process rewards from an online PRM, per-source RLOO.

Each step (ALGORITHMS.md section 4):
  1. rollouts, verifier accuracy acc in {0, 1}; groups outside the accuracy band
     [prime.acc_low, prime.acc_high] are dropped and more prompts drawn, up to
     `prime.oversample` rounds (`keep_groups` below, run by the trainer's collect);
  2. the implicit PRM role (`rlx.train.prm.ImplicitPRM`) is updated on the batch and scores it:
     q_t = log pi_phi - log pi_ref;
  3. token rewards r_t = beta q_t (optionally batch-normalised), advantages by per-source RLOO,
     reverse cumsum and whitening (`rlx.kernels.prime`), then the ordinary actor update.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from rlx.config import Config, ConfigError
from rlx.kernels import ADVANTAGE_FNS
from rlx.kernels.prime import accuracy_band_keep, batch_norm_rewards, implicit_token_rewards
from rlx.train.objectives import AdvantageInputs, Objective, register_objective


def check(cfg: Config) -> None:
    """Errors that name the fix, at config load."""
    p = cfg.prime
    if cfg.algo.n < 2:
        raise ConfigError(f"PRIME's leave-one-out baselines need algo.n >= 2 responses per prompt, "
                          f"got {cfg.algo.n}")
    if not 0.0 <= p.acc_low <= p.acc_high <= 1.0:
        raise ConfigError(f"prime.acc_low={p.acc_low}, prime.acc_high={p.acc_high}: need "
                          "0 <= acc_low <= acc_high <= 1")
    if p.oversample < 1:
        raise ConfigError(f"prime.oversample={p.oversample} must be >= 1 (1 = no oversampling)")


def keep_groups(cfg: Config, batch) -> np.ndarray:
    """Groups whose mean accuracy lies in [prime.acc_low, prime.acc_high] (prime.filter)."""
    p = cfg.prime
    low, high = (p.acc_low, p.acc_high) if p.filter else (-np.inf, np.inf)
    band_B = accuracy_band_keep(batch.correct, batch.group_ids, low=low, high=high,
                                truncated_B=batch.truncated, drop_truncated=p.drop_truncated)
    n = cfg.algo.n
    return np.asarray(band_B).reshape(-1, n)[:, 0]


def advantages(x: AdvantageInputs) -> tuple[np.ndarray, dict]:
    p, mask = x.cfg.prime, x.mask_BxL
    rewards = implicit_token_rewards(x.prm["logp"], x.prm["ref_logp"], mask, beta=p.beta, granularity=p.granularity)
    if p.batch_norm:
        rewards = batch_norm_rewards(rewards, mask)
    adv, _ = ADVANTAGE_FNS["prime"](
        mask_BxL=jnp.asarray(mask), group_ids_B=jnp.asarray(x.batch.group_ids), token_rewards_BxL=rewards,
        scores_B=jnp.asarray(x.prm["acc"]), process_coef=p.process_coef, outcome_coef=p.outcome_coef)
    real = x.batch.group_ids >= 0
    metrics = {"prm/process_reward_mean": float(np.asarray(rewards).sum(1)[real].mean())}
    return np.asarray(adv) * mask, metrics


PRIME = register_objective(Objective(
    "prime", advantages, check=check, prm=lambda cfg: "implicit", keep_groups=keep_groups,
    rounds=lambda cfg: cfg.prime.oversample, needs_labels=True))
