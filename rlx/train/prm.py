"""Process reward models as a role of the RL step: static parts here, trainable state in RLState.

A role is built once per run (`PRM_ROLES[kind](...)`) and each step calls

    state, outputs, metrics = role.step(state, batch, mask_BxR, old_logp_BxR)

on the step's kept rollouts; `outputs` is what the objective's advantage function reads
(`AdvantageInputs.prm`). Two kinds:

implicit    PRIME's implicit PRM (ALGORITHMS.md section 4): a causal LM initialised from the
            starting actor, trained online by BCE(sigmoid(beta sum_t q_t), acc) with
            q_t = log pi_phi(y_t) - log pi_ref(y_t), one optimizer step per mini-batch. Its
            reference is a frozen copy of the starting actor (`prime.reference=sft`) or the
            actor's rollout log-probs (`old_policy`). Outputs: {"logp", "ref_logp", "acc"}.
classifier  a frozen classifier-head PRM read from `pure.prm_path` (Qwen2.5-Math-PRM's layout),
            fed the rollouts in the format it was trained on (`pure.prm_format`): outputs
            {"ends", "step_logits"}, its two-class logits at each step's separator.

Temperature: the implicit PRM and its SFT reference score at temperature 1 -- PRIME's reward
model (verl recipe/prime/prime_dp_rm.py) takes log_softmax of the raw logits, whatever the
rollout temperature. Only `prime.reference=old_policy` reads the actor's log-probs, which are
those of the tempered distribution the rollout sampled from (PRIME's `old_log_probs` are too).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlx import hostio
from rlx.config import Config, ConfigError
from rlx.kernels.prime import implicit_q, prm_bce_loss
from rlx.train import batch as layout
from rlx.train.optim import init_state, prm_optimizer
from rlx.train.placement import copy_to
from rlx.train.update import score, score_logprobs, score_rows

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


def _device_batch(batch, mask_BxR: np.ndarray, mesh) -> dict:
    ids, mask, positions = layout.concat(batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                         batch.response_mask)
    correct = np.asarray(batch.correct, np.float32)
    # Rows without a gold answer (NaN) carry no label: they stay out of the PRM's loss.
    row_mask = (batch.group_ids >= 0) & ~np.isnan(correct)
    return hostio.put_rows({"ids": ids, "mask": mask, "positions": positions, "response_mask": mask_BxR,
                            "acc": np.nan_to_num(correct), "row_mask": row_mask.astype(np.float32)}, mesh)


class ImplicitPRM:
    """PRIME's implicit PRM: `prime` section settings, state {"params", "opt_state"}."""

    def __init__(self, cfg: Config, graphdef, start_params, mesh, *, micro_batches: int, reference=None):
        p = cfg.prime
        self.cfg, self.graphdef, self.mesh = cfg, graphdef, mesh
        self.start_params = start_params
        # The frozen reference: the actor's KL reference when it lives on this mesh, else a copy.
        self.ref_params = None
        if p.reference == "sft":
            self.ref_params = reference if reference is not None else copy_to(start_params, mesh)
        self.optimizer = prm_optimizer(cfg)
        self.spec = PrmSpec(beta=p.beta, micro_batches=micro_batches)

    def init_state(self) -> dict:
        # PRIME initialises the PRM from the SFT model, i.e. the actor as it starts.
        params = copy_to(self.start_params, self.mesh)
        return {"params": params, "opt_state": init_state(self.optimizer, params)}

    def step(self, state: dict, batch, mask_BxR: np.ndarray, old_logp_BxR: np.ndarray):
        """Update on this batch and score it at temperature 1 (module docstring)."""
        p = self.cfg.prime
        rows = len(batch.group_ids) // self.cfg.trainer.mini_batches // self.spec.micro_batches
        with jax.set_mesh(self.mesh):
            device = _device_batch(batch, mask_BxR, self.mesh)
            if p.reference == "sft":
                prm_ref = score_rows(score, self.graphdef, self.ref_params, device, PRM_TEMPERATURE, self.mesh, rows,
                                     mask_BxR)
            else:
                prm_ref = np.asarray(old_logp_BxR, np.float32)
            device["prm_ref_logp"] = hostio.put_rows(np.asarray(prm_ref, np.float32), self.mesh)
            state, logp, metrics = self._update(state, device)
            if p.update == "before":
                logp = score_rows(score, self.graphdef, state["params"], device, PRM_TEMPERATURE, self.mesh, rows,
                                  mask_BxR)
        logp, prm_ref = np.asarray(hostio.get(logp)), np.asarray(prm_ref)  # the rest runs on each host's copy
        acc = np.asarray(batch.correct, np.float32)
        real = (batch.group_ids >= 0) & ~np.isnan(acc)
        q_sum = np.asarray(implicit_q(logp, prm_ref, mask_BxR)).sum(1)
        # The PRM as a verifier: does sigmoid(beta sum q) > 0.5 agree with the outcome label?
        metrics.update({"prm/q_sum_mean": float(q_sum[real].mean()) if real.any() else 0.0,
                        "prm/label_accuracy": float(((p.beta * q_sum > 0) == (acc > 0.5))[real].mean())
                        if real.any() else float("nan")})
        return state, {"logp": logp, "ref_logp": prm_ref, "acc": acc}, metrics

    def _update(self, state: dict, device: dict):
        """One PRM step per mini-batch, in order (as PRIME splits its batch). Returns each
        mini-batch's log-probs from before its own step -- so a later mini-batch is scored by
        the PRM after the earlier steps, as in PRIME -- and the mean metrics."""
        batch = device["ids"].shape[0]
        mini_batches = self.cfg.trainer.mini_batches
        mini = batch // mini_batches
        params, opt_state = state["params"], state["opt_state"]
        logps, sums = [], {}
        for i in range(mini_batches):
            mb = hostio.take_rows(device, np.arange(i * mini, (i + 1) * mini), self.mesh)
            params, opt_state, m, logp = prm_train_step(self.graphdef, self.optimizer, self.spec, params,
                                                        opt_state, mb)
            logps.append(logp)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        metrics = {k: v / mini_batches for k, v in sums.items()}
        if not np.isfinite(metrics["prm/loss"]):
            raise FloatingPointError(f"the PRM loss is not finite ({metrics['prm/loss']}); lower "
                                     "prime.prm_lr or prime.beta, or set prime.prm_grad_clip")
        return {"params": params, "opt_state": opt_state}, jnp.concatenate(logps), metrics


@functools.partial(jax.jit, static_argnums=(0,))
@functools.partial(jax.jit, static_argnums=(0,))
def _step_logits(graphdef, params, batch: dict):
    """The PRM's two-class logits at the positions `read` names, [B, K, 2] (garbage where -1)."""
    logits_BxTx2 = nnx.merge(graphdef, params)(batch["ids"], batch["positions"], batch["mask"])
    read = jnp.maximum(batch["read"], 0)
    return jnp.take_along_axis(logits_BxTx2, read[:, :, None], axis=1)


class ClassifierPRM:
    """A frozen classifier-head PRM, fed the rollouts in the format it was trained on
    (`pure.prm_format`, `rlx.train.prm_format`); no trainable state.

    Outputs {"ends": step ends [B, K], "step_logits": [B, K, 2]}, one reading per step.
    """

    def __init__(self, cfg: Config, mesh, *, tokenizer):
        from rlx.models.prm import from_hf_prm
        from rlx.models.tokenizer import Tokenizer
        from rlx.train.prm_format import DEFAULT_SEPARATORS, separator_id

        pu = cfg.pure
        prm = from_hf_prm(pu.prm_path, dtype=cfg.model.dtype, mesh=mesh)
        own = any((Path(pu.prm_path) / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
        self.prm_tokenizer = Tokenizer.load(pu.prm_path) if own else tokenizer
        vocab = prm.backbone.config.vocab_size
        if pu.prm_format != "qwen_prm" and vocab < tokenizer.vocab_size:
            raise ConfigError(f"pure.prm_path's vocabulary ({vocab}) is smaller than the actor tokenizer's "
                              f"({tokenizer.vocab_size}); pure.prm_format={pu.prm_format} feeds the PRM the actor's "
                              "tokens, so the PRM must share the tokenizer")
        if pu.prm_format != "actor":  # fail at load, not at the first step
            try:
                separator_id(self.prm_tokenizer, pu.prm_separator or DEFAULT_SEPARATORS[pu.prm_format],
                             where=f"pure.prm_format={pu.prm_format}")
            except ValueError as e:
                raise ConfigError(str(e)) from None
        self.cfg, self.tokenizer, self.mesh = cfg, tokenizer, mesh
        self.graphdef, self.params = nnx.split(prm)

    def init_state(self) -> dict:
        return {}

    def step(self, state: dict, batch, mask_BxR: np.ndarray, old_logp_BxR: np.ndarray):
        from rlx.train.prm_format import prm_inputs
        from rlx.train.pure import step_ends

        del old_logp_BxR
        pu = self.cfg.pure
        ends = step_ends(self.tokenizer, batch.response_ids, mask_BxR, pu.separators, pu.max_steps)
        x = prm_inputs(pu.prm_format, batch, ends, actor_tokenizer=self.tokenizer,
                       prm_tokenizer=self.prm_tokenizer, separator=pu.prm_separator)
        device = hostio.put_rows({"ids": x.ids_BxT, "mask": x.mask_BxT, "positions": x.positions_BxT,
                                  "read": x.read_BxK}, self.mesh)
        with jax.set_mesh(self.mesh):
            logits = _step_logits(self.graphdef, self.params, device)
        return state, {"ends": np.where(x.read_BxK >= 0, ends, -1), "step_logits": np.asarray(hostio.get(logits))}, {}


PRM_ROLES = ("implicit", "classifier")


def build_prm(kind: str, cfg: Config, *, graphdef, start_params, mesh, micro_batches: int, tokenizer,
              reference=None):
    if kind == "implicit":
        return ImplicitPRM(cfg, graphdef, start_params, mesh, micro_batches=micro_batches, reference=reference)
    if kind == "classifier":
        return ClassifierPRM(cfg, mesh, tokenizer=tokenizer)
    raise ConfigError(f"unknown PRM role {kind!r}; one of {', '.join(PRM_ROLES)}")
