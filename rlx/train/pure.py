"""PURE in the RL loop: min-form credit assignment on a PRM's step scores (ALGORITHMS.md
section 6; kernels in `rlx.kernels.pure`). The PRM is PRIME's implicit PRM (`pure.prm=implicit`)
or a frozen classifier-head PRM (`pure.prm=classifier`, `rlx.models.prm`), which gives
PR_k = p(positive) - p(negative) at step k's last token in place of steps 1 and 3.

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

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx import hostio
from rlx.config import Config, ConfigError
from rlx.kernels import ADVANTAGE_FNS
from rlx.kernels.prime import implicit_q
from rlx.kernels.pure import min_form_step_rewards, scatter_step_rewards, step_scores_from_logits
from rlx.models.prm import from_hf_prm
from rlx.train import batch as layout
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


def pure_advantages_from_scores(cfg: Config, sb: StepBatch, resp_mask, pr: np.ndarray, ends: np.ndarray,
                                metrics: dict) -> np.ndarray:
    """Steps 4 of the module docstring, from step scores PR_BxK and step ends; fills `metrics`."""
    pu = cfg.pure
    acc = np.asarray(sb.correct, np.float32)
    rewards = min_form_step_rewards(pr, ends >= 0, temperature=pu.temperature, weighted=pu.weighting == "min")
    token_r, end_mask = scatter_step_rewards(rewards, ends, resp_mask.shape[1])
    adv, _ = ADVANTAGE_FNS["pure"](
        mask_BxL=jnp.asarray(resp_mask), group_ids_B=jnp.asarray(sb.group_ids), token_rewards_BxL=token_r,
        step_end_mask_BxL=end_mask, scores_B=jnp.asarray(acc - 1.0) if pu.vr_coef else None,
        vr_coef=pu.vr_coef, zero_step_ends=pu.zero_step_ends, baseline=pu.baseline)
    real = (sb.group_ids >= 0) & (resp_mask.sum(1) > 0)
    steps = (ends >= 0).sum(1)
    pr_min = np.where(ends >= 0, pr, np.inf).min(1)

    def mean(x):
        return float(np.mean(x[real])) if real.any() else 0.0

    metrics.update({"pure/steps_mean": mean(steps), "pure/step_score_mean": mean(pr.sum(1) / np.maximum(steps, 1)),
                    "pure/min_step_score_mean": mean(pr_min),
                    "pure/process_reward_mean": mean(np.asarray(rewards).sum(1))})
    return np.asarray(adv) * resp_mask


def _check_labels(sb: StepBatch) -> None:
    if np.isnan(sb.correct).any():
        raise ValueError("PURE needs the verifier's accuracy (its verifiable reward, and the implicit PRM's "
                         "labels), but some prompts have no gold answer; set data.answer_field")


class PureTrainer(PrimeTrainer):
    """PURE on PRIME's implicit PRM: PrimeTrainer's PRM role, without PRIME's prompt filter."""

    estimators = ("pure",)

    def _sampling_rounds(self) -> int:
        return RLTrainer._sampling_rounds(self)

    def _keep_groups(self, sb: StepBatch) -> np.ndarray:
        _check_labels(sb)
        return RLTrainer._keep_groups(self, sb)

    def _advantages(self, sb: StepBatch, old_logp, ref_logp, resp_mask) -> np.ndarray:
        del ref_logp
        t0 = time.perf_counter()
        cfg, pu = self.cfg, self.cfg.pure
        logp_prm, prm_ref, _, metrics = self._score_with_prm(sb, old_logp, resp_mask)
        q = np.asarray(implicit_q(logp_prm, prm_ref, resp_mask), np.float64)
        ends = step_ends(self.tokenizer, sb.response_ids, resp_mask, pu.separators, pu.max_steps)
        pr = step_scores(q, ends, beta=cfg.prime.beta, kind=pu.step_score)
        adv = pure_advantages_from_scores(cfg, sb, resp_mask, pr, ends, metrics)
        metrics["time/prm"] = time.perf_counter() - t0
        self._prm_metrics = metrics
        return adv


@functools.partial(jax.jit, static_argnums=(0,))
def _classifier_logits(graphdef, params, batch: dict):
    """The PRM's two-class logits at the response positions, [B, R, 2]."""
    width = batch["response_mask"].shape[1]
    logits_BxTx2 = nnx.merge(graphdef, params)(batch["ids"], batch["positions"], batch["mask"])
    return logits_BxTx2[:, -width:]


class ClassifierPureTrainer(RLTrainer):
    """PURE on a frozen classifier-head PRM (`pure.prm=classifier`, read from `pure.prm_path`)
    that shares the actor's tokenizer; it scores each step at the step's last token."""

    estimators = ("pure",)

    def __init__(self, cfg: Config, model, task, *, checkpointer=None):
        super().__init__(cfg, model, task, checkpointer=checkpointer)
        prm = from_hf_prm(cfg.pure.prm_path, dtype=cfg.model.dtype, mesh=self.meshes.prm)
        if prm.backbone.config.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(f"pure.prm_path's vocabulary ({prm.backbone.config.vocab_size}) is smaller than the "
                              f"actor tokenizer's ({self.tokenizer.vocab_size}); the PRM must share the tokenizer")
        self.prm_graphdef, self.prm_params = nnx.split(prm)
        self._prm_metrics: dict = {}

    def step(self) -> dict:
        metrics = super().step()
        metrics.update(self._prm_metrics)
        return metrics

    def _keep_groups(self, sb: StepBatch) -> np.ndarray:
        _check_labels(sb)
        return super()._keep_groups(sb)

    def _advantages(self, sb: StepBatch, old_logp, ref_logp, resp_mask) -> np.ndarray:
        del old_logp, ref_logp
        t0 = time.perf_counter()
        pu = self.cfg.pure
        ids, mask, positions = layout.concat(sb.prompt_ids, sb.prompt_mask, sb.response_ids, sb.response_mask)
        batch = hostio.put_rows({"ids": ids, "mask": mask, "positions": positions, "response_mask": resp_mask},
                                self.meshes.prm)
        logits = np.asarray(hostio.get(_classifier_logits(self.prm_graphdef, self.prm_params, batch)))
        ends = step_ends(self.tokenizer, sb.response_ids, resp_mask, pu.separators, pu.max_steps)
        at_ends = np.take_along_axis(logits, np.maximum(ends, 0)[:, :, None], axis=1)
        pr = np.where(ends >= 0, np.asarray(step_scores_from_logits(at_ends)), 0.0)
        metrics: dict = {}
        adv = pure_advantages_from_scores(self.cfg, sb, resp_mask, pr, ends, metrics)
        metrics["time/prm"] = time.perf_counter() - t0
        self._prm_metrics = metrics
        return adv
