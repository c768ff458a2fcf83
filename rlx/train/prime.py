"""PRIME in the RL loop: an implicit process reward model trained online beside the actor.

Each step (ALGORITHMS.md section 4):
  1. rollouts, verifier accuracy acc in {0, 1}; groups outside the accuracy band
     [prime.acc_low, prime.acc_high] are dropped and more prompts drawn, up to
     `prime.oversample` rounds (the trainer's `_collect` / `_assemble` via `_keep_groups`);
  2. the PRM pi_phi (a causal LM, a copy of the starting actor) and its reference pi_ref (a
     frozen copy of the starting actor, or the actor's rollout log-probs) score the responses;
  3. one PRM update per mini-batch on BCE(sigmoid(beta sum_t q_t), acc), q_t = log pi_phi - log
     pi_ref -- before the scoring (then score again) or after it (use the update pass's scores);
  4. token rewards r_t = beta q_t (optionally batch-normalised), advantages by per-source RLOO,
     reverse cumsum and whitening (`rlx.kernels.prime`), then the ordinary actor update.

Temperature: the PRM and its SFT reference score at temperature 1 -- PRIME's reward model
(verl recipe/prime/prime_dp_rm.py) takes log_softmax of the raw logits, whatever the rollout
temperature. Only `prime.reference=old_policy` reads the actor's log-probs, which are those of
the tempered distribution the rollout sampled from (PRIME's `old_log_probs` are too).

The PRM's parameters and optimizer state are part of the checkpoint; the frozen reference is
rebuilt from the starting model on resume, as the actor's KL reference is.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlx import hostio
from rlx.config import Config, ConfigError
from rlx.kernels import ADVANTAGE_FNS
from rlx.kernels.prime import (GRANULARITIES, accuracy_band_keep, batch_norm_rewards,
                               implicit_q, implicit_token_rewards, prm_bce_loss)
from rlx.train import batch as layout
from rlx.train.optim import adamw, init_state
from rlx.train.placement import copy_to
from rlx.train.trainer import RLTrainer, StepBatch
from rlx.train.update import score, score_logprobs

UPDATES = ("before", "after")
REFERENCES = ("sft", "old_policy")
PRM_TEMPERATURE = 1.0


@dataclass(frozen=True)
class PrmSpec:
    """Static PRM-update settings (hashable: part of the compiled program's identity)."""

    beta: float = 0.05
    micro_batches: int = 1


def _prm_micro_loss(params, graphdef, spec: PrmSpec, mb: dict, denom):
    logp_BxR = score_logprobs(graphdef, params, mb, PRM_TEMPERATURE)
    total, _ = prm_bce_loss(logp_BxR, mb["prm_ref_logp"], mb["response_mask"], mb["acc"],
                            beta=spec.beta, row_mask_B=mb["row_mask"])
    return total / denom, jax.lax.stop_gradient(logp_BxR)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3, 4))
def prm_train_step(graphdef, optimizer: optax.GradientTransformation, spec: PrmSpec, params,
                   opt_state, minibatch: dict):
    """One PRM optimizer step on the mean BCE over the mini-batch's real rows (row_mask).

    Micro-batches are walked by a `lax.scan` summing gradients of (BCE sum / global row count),
    as `rlx.train.update.train_step` does for the actor. Also returns the PRM's log-probs of
    the mini-batch *before* the step, which `prime.update=after` turns into rewards.
    Returns (params, opt_state, metrics, logp_BxR).
    """
    denom = jnp.maximum(minibatch["row_mask"].sum().astype(jnp.float32), 1.0)
    micro = jax.tree.map(lambda x: x.reshape(spec.micro_batches, -1, *x.shape[1:]), minibatch)
    grad_fn = jax.value_and_grad(_prm_micro_loss, has_aux=True)

    def body(carry, mb):
        grads, loss = carry
        (l, logp), g = grad_fn(params, graphdef, spec, mb, denom)
        return (jax.tree.map(jnp.add, grads, g), loss + l), logp

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss), logp_MxbxR = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), micro)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"prm/loss": loss, "prm/grad_norm": optax.global_norm(grads)}
    return params, opt_state, metrics, logp_MxbxR.reshape(-1, logp_MxbxR.shape[-1])


def prm_bce(graphdef, params, batch: dict, beta: float) -> float:
    """The PRM's mean BCE on a batch (no update): a diagnostic and a test hook."""
    logp = score(graphdef, params, batch, PRM_TEMPERATURE)
    total, rows = prm_bce_loss(logp, batch["prm_ref_logp"], batch["response_mask"], batch["acc"],
                               beta=beta, row_mask_B=batch["row_mask"])
    return float(total / jnp.maximum(rows, 1.0))


def check_prime_config(cfg: Config) -> None:
    """Errors that name the fix, before any model is built."""
    p = cfg.prime
    choices = {"prime.update": (p.update, UPDATES), "prime.reference": (p.reference, REFERENCES),
               "prime.granularity": (p.granularity, GRANULARITIES)}
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"{key}='{value}' is not one of {', '.join(valid)}")
    if cfg.algo.n < 2:
        raise ConfigError(f"PRIME's leave-one-out baselines need algo.n >= 2 responses per prompt, "
                          f"got {cfg.algo.n}")
    if not 0.0 <= p.acc_low <= p.acc_high <= 1.0:
        raise ConfigError(f"prime.acc_low={p.acc_low}, prime.acc_high={p.acc_high}: need "
                          "0 <= acc_low <= acc_high <= 1")
    if p.oversample < 1:
        raise ConfigError(f"prime.oversample={p.oversample} must be >= 1 (1 = no oversampling)")
    if p.prm_lr <= 0:
        raise ConfigError(f"prime.prm_lr={p.prm_lr} must be > 0")


class PrimeTrainer(RLTrainer):
    """RLTrainer with a PRM role: its params, AdamW state and frozen reference."""

    estimators = ("prime",)

    def __init__(self, cfg: Config, model, task, *, checkpointer=None):
        check_prime_config(cfg)
        super().__init__(cfg, model, task, checkpointer=checkpointer)
        p = cfg.prime
        # PRIME initialises the PRM from the SFT model, i.e. the actor as it starts.
        mesh = self.meshes.prm
        self.prm_params = copy_to(self.params, mesh)
        self.prm_ref_params = None
        if p.reference == "sft":
            shared = self.ref_params is not None and self.meshes.reference is mesh
            self.prm_ref_params = self.ref_params if shared else copy_to(self.params, mesh)
        self.prm_optimizer = adamw(p.prm_lr, max(cfg.trainer.steps * cfg.trainer.mini_batches, 1),
                                   schedule="constant", weight_decay=p.prm_weight_decay,
                                   grad_clip=p.prm_grad_clip)
        self.prm_opt_state = init_state(self.prm_optimizer, self.prm_params)
        self.prm_spec = PrmSpec(beta=p.beta, micro_batches=self.spec.micro_batches)
        self._prm_metrics: dict = {}

    # -- prompt filter (hooks of RLTrainer._collect) --------------------------------------

    def _sampling_rounds(self) -> int:
        return max(self.cfg.prime.oversample, super()._sampling_rounds())

    def _keep_groups(self, sb: StepBatch) -> np.ndarray:
        keep = super()._keep_groups(sb)
        if np.isnan(sb.correct).any():
            raise ValueError("PRIME trains its PRM on the verifier's accuracy, but some prompts have "
                             "no gold answer; set data.answer_field to the answer column")
        p = self.cfg.prime
        low, high = (p.acc_low, p.acc_high) if p.filter else (-np.inf, np.inf)
        band_B = accuracy_band_keep(sb.correct, sb.group_ids, low=low, high=high,
                                    truncated_B=sb.truncated, drop_truncated=p.drop_truncated)
        want, n = self.cfg.trainer.prompts_per_step, self.cfg.algo.n
        return keep & np.asarray(band_B).reshape(want, n)[:, 0]

    # -- rewards and advantages ------------------------------------------------------------

    def step(self) -> dict:
        metrics = super().step()
        metrics.update(self._prm_metrics)
        return metrics

    def _advantages(self, sb: StepBatch, old_logp, ref_logp, resp_mask) -> np.ndarray:
        del ref_logp  # the actor's KL reference; the PRM has its own
        t0 = time.perf_counter()
        p = self.cfg.prime
        logp_prm, prm_ref, acc, metrics = self._score_with_prm(sb, old_logp, resp_mask)
        rewards = implicit_token_rewards(logp_prm, prm_ref, resp_mask, beta=p.beta, granularity=p.granularity)
        if p.batch_norm:
            rewards = batch_norm_rewards(rewards, resp_mask)
        adv, _ = ADVANTAGE_FNS["prime"](
            mask_BxL=jnp.asarray(resp_mask), group_ids_B=jnp.asarray(sb.group_ids), token_rewards_BxL=rewards,
            scores_B=jnp.asarray(acc), process_coef=p.process_coef, outcome_coef=p.outcome_coef)
        real = sb.group_ids >= 0
        metrics.update({"prm/process_reward_mean": float(np.asarray(rewards).sum(1)[real].mean()),
                        "time/prm": time.perf_counter() - t0})
        self._prm_metrics = metrics
        return np.asarray(adv) * resp_mask

    def _score_with_prm(self, sb: StepBatch, old_logp, resp_mask):
        """Update the PRM on this batch and score it: (log pi_phi, log pi_ref, acc, metrics),
        the log-probs being BxR at temperature 1."""
        p = self.cfg.prime
        ids, mask, positions = layout.concat(sb.prompt_ids, sb.prompt_mask, sb.response_ids, sb.response_mask)
        acc = np.asarray(sb.correct, np.float32)
        device = hostio.put_rows({"ids": ids, "mask": mask, "positions": positions, "response_mask": resp_mask,
                                  "acc": acc, "row_mask": (sb.group_ids >= 0).astype(np.float32)}, self.meshes.prm)
        if p.reference == "sft":
            prm_ref = score(self.graphdef, self.prm_ref_params, device, PRM_TEMPERATURE)
        else:
            prm_ref = hostio.put_rows(np.asarray(old_logp, np.float32), self.meshes.prm)
        device["prm_ref_logp"] = prm_ref
        logp_prm, metrics = self._update_prm(device)
        if p.update == "before":
            logp_prm = score(self.graphdef, self.prm_params, device, PRM_TEMPERATURE)
        logp_prm, prm_ref = hostio.get((logp_prm, prm_ref))  # the rest runs on each host's copy
        real = sb.group_ids >= 0
        q_sum = np.asarray(implicit_q(logp_prm, prm_ref, resp_mask)).sum(1)
        # The PRM as a verifier: does sigmoid(beta sum q) > 0.5 agree with the outcome label?
        metrics.update({
            "prm/q_sum_mean": float(q_sum[real].mean()),
            "prm/label_accuracy": float(((p.beta * q_sum > 0) == (acc > 0.5))[real].mean()),
        })
        return logp_prm, prm_ref, acc, metrics

    def _update_prm(self, device: dict) -> tuple[jax.Array, dict]:
        """One PRM step per mini-batch, in order (as PRIME splits its batch). Returns each
        mini-batch's log-probs from before its own step -- so a later mini-batch is scored by
        the PRM after the earlier steps, as in PRIME -- and the mean metrics."""
        batch = device["ids"].shape[0]
        mini = batch // self.cfg.trainer.mini_batches
        logps, sums = [], {}
        for i in range(self.cfg.trainer.mini_batches):
            mb = hostio.take_rows(device, np.arange(i * mini, (i + 1) * mini), self.meshes.prm)
            self.prm_params, self.prm_opt_state, m, logp = prm_train_step(
                self.graphdef, self.prm_optimizer, self.prm_spec, self.prm_params, self.prm_opt_state, mb)
            logps.append(logp)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        metrics = {k: v / self.cfg.trainer.mini_batches for k, v in sums.items()}
        if not np.isfinite(metrics["prm/loss"]):
            raise FloatingPointError(f"the PRM loss is not finite ({metrics['prm/loss']}); lower "
                                     "prime.prm_lr or prime.beta, or set prime.prm_grad_clip")
        return jnp.concatenate(logps), metrics

    # -- checkpoints -----------------------------------------------------------------------

    def train_state(self) -> dict:
        return {**super().train_state(), "prm_params": self.prm_params, "prm_opt_state": self.prm_opt_state}

    def set_train_state(self, state: dict) -> None:
        super().set_train_state(state)
        self.prm_params, self.prm_opt_state = state["prm_params"], state["prm_opt_state"]


def trainer_class(cfg: Config) -> type[RLTrainer]:
    """The trainer for `algo.advantage`: PRIME and PURE need a PRM role, the rest share RLTrainer."""
    if cfg.algo.advantage == "pure":
        from rlx.train.pure import ClassifierPureTrainer, PureTrainer

        return ClassifierPureTrainer if cfg.pure.prm == "classifier" else PureTrainer
    return PrimeTrainer if cfg.algo.advantage == "prime" else RLTrainer
