"""The RL trainer: one class for every objective, a step that reads top to bottom

    collect (rollouts, rewards, shaping, prompt filters) -> score (old / reference log-probs,
    entropy, the PRM role) -> advantages (the objective's function) -> update -> controllers

over one `RLState` (rlx.train.state), checkpointed whole. An objective (rlx.train.objectives)
is data: the trainer never branches on its name. Every random choice in a step derives from
(RL seed, step, salt), so a run restored from a checkpoint continues exactly as the
uninterrupted run would have.

Log-probs: the PPO ratio, the KL and the entropy are taken under the full tempered
distribution softmax(z / T) at the rollout temperature -- the policy being trained. With top-k,
top-p or min-p the sampler's own log-probs are those of a truncated distribution, so the old
log-probs are then always recomputed by a scoring pass (as verl does); without truncation the
sampler's are the same quantity and are used unless `algo.recompute_old_logprobs`.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx import hostio
from rlx.checkpoint import Checkpointer
from rlx.config import Config
from rlx.data.pipeline import PromptStream
from rlx.engine import Engine, EngineConfig, SamplingConfig
from rlx.generate import generate, stop_rules
from rlx.kernels.dapo import soft_overlong_penalty
from rlx.kernels.empo import entropy_from_rewards
from rlx.kernels.policy_loss import adaptive_kl_update, kl_penalty
from rlx.kernels.temperature import temperature_step
from rlx.train import batch as layout
from rlx.train import placement
from rlx.train.batch import StepBatch, assemble
from rlx.train.objectives import AdvantageInputs, get_objective
from rlx.train.optim import actor_optimizer, init_state
from rlx.train.prm import build_prm
from rlx.train.rewards import RewardScorer
from rlx.train.shaping import length_at, observe_length, shape_scores
from rlx.train.state import RLState
from rlx.train.update import LossSpec, score, score_rows, score_with_entropy, train_step


def sampling_config(cfg: Config, temperature: float | None = None) -> SamplingConfig:
    """The rollout's sampling distribution; the temperature comes from the run state."""
    e = cfg.engine
    return SamplingConfig(temperature=e.temperature if temperature is None else temperature,
                          top_k=e.top_k, top_p=e.top_p, min_p=e.min_p)


def loss_spec(cfg: Config, micro_batches: int, max_len: int) -> LossSpec:
    a = cfg.algo
    return LossSpec(eps_low=a.clip_low, eps_high=a.clip_high, dual_clip=a.dual_clip or None, agg=a.loss_agg,
                    max_len=max_len, kl_type=a.kl_type, use_kl=a.kl_coef > 0 and not a.kl_in_reward,
                    entropy_coef=a.entropy_coef, micro_batches=micro_batches)


def micro_batches(cfg: Config) -> int:
    mini = cfg.trainer.prompts_per_step * cfg.algo.n // cfg.trainer.mini_batches
    return mini // (cfg.trainer.micro_batch_size or mini)


class RLTrainer:
    """Builds the roles once; `step()` advances `self.state` by one RL step."""

    def __init__(self, cfg: Config, model: nnx.Module, task, *, checkpointer: Checkpointer | None = None):
        self.cfg, self.task, self.tokenizer = cfg, task, task.tokenizer
        self.objective = get_objective(cfg.algo.advantage)
        self.graphdef, params = nnx.split(model)
        self.meshes = placement.role_meshes(cfg.mesh, params)
        # The engine keeps its own reference to the arrays it is given; the update donates its
        # inputs, so the state owns a separate copy.
        actor = placement.copy_to(params, self.meshes.actor)
        self.ref_params = placement.copy_to(params, self.meshes.reference) if cfg.algo.kl_coef > 0 else None
        t = cfg.trainer
        self.optimizer = actor_optimizer(cfg)
        self.micro_batches = micro_batches(cfg)
        # Scoring passes take a micro-batch of rows at a time, as the update does: at long
        # contexts one program over the whole step would need many times the update's memory.
        self.score_rows = t.prompts_per_step * cfg.algo.n // t.mini_batches // self.micro_batches
        e = cfg.engine
        self.engine = Engine(model, EngineConfig(
            max_concurrent_decodes=e.max_concurrent_decodes, max_prefill_length=e.max_prefill_length,
            max_cache_len=e.max_cache_len, steps_per_sync=e.steps_per_sync, eos_ids=tuple(self.tokenizer.eos_ids)),
            mesh=self.meshes.engine)
        self.stop = stop_rules(e.stop, cfg.tokenizer.chat_style, cfg.data.template)
        kind = self.objective.prm(cfg)
        self.prm = None
        if kind:
            shared = self.ref_params is not None and self.meshes.reference is self.meshes.prm
            self.prm = build_prm(kind, cfg, graphdef=self.graphdef, start_params=params, mesh=self.meshes.prm,
                                 micro_batches=self.micro_batches, tokenizer=self.tokenizer,
                                 reference=self.ref_params if shared else None)
        self.seed = t.seed if t.seed >= 0 else cfg.run.seed
        self.stream = PromptStream(task.train, t.prompts_per_step, seed=self.seed, shuffle=cfg.data.shuffle)
        self.rewards = RewardScorer(cfg.rewards)
        self.checkpointer = checkpointer
        self.state = RLState(params=actor, opt_state=init_state(self.optimizer, actor),
                             prm=self.prm.init_state() if self.prm else {}, kl_coef=float(cfg.algo.kl_coef),
                             temperature=float(e.temperature))
        self.engine.update_params(self.state.params)

    # -- the step -----------------------------------------------------------------------------

    def max_new_tokens(self, state: RLState | None = None) -> int:
        s = state or self.state
        return length_at(self.cfg.campo, self.cfg.engine.max_new_tokens, s.length_stage, s.step)

    def step(self) -> dict:
        cfg, s, t = self.cfg, self.state, {}
        max_len = self.max_new_tokens(s)
        t0 = time.perf_counter()
        batch, metrics, draws = self.collect(s, max_len)
        t["rollout+reward"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        mask = batch.response_mask
        device, old_logp, ref_logp, entropy = self.score(s, batch)
        prm_state, prm_out, prm_metrics = s.prm, {}, {}
        if self.prm is not None:
            prm_state, prm_out, prm_metrics = self.prm.step(s.prm, batch, mask, old_logp)
        t["scoring"] = time.perf_counter() - t0

        inputs = AdvantageInputs(cfg=cfg, batch=batch, mask_BxL=mask, old_logp_BxL=old_logp, ref_logp_BxL=ref_logp,
                                 kl_coef=s.kl_coef, prm=prm_out, tokenizer=self.tokenizer)
        adv, adv_metrics = self.objective.advantages(inputs)
        loss_mask = mask
        if self.objective.loss_rows is not None:
            loss_mask = mask * np.asarray(self.objective.loss_rows(inputs), bool)[:, None]
            adv_metrics["filter/loss_rows_fraction"] = float((loss_mask.sum(1) > 0).mean())

        t0 = time.perf_counter()
        params, opt_state, update_metrics = self.update(s, device, old_logp, ref_logp, adv, max_len, loss_mask)
        t["update"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.engine.update_params(params)
        t["sync"] = time.perf_counter() - t0

        real = batch.group_ids >= 0
        lengths = batch.lengths  # truncated rows at full length, even when masked out of the loss
        metrics.update({
            "reward/mean": float(batch.scores[real].mean()), "reward/accuracy": _labelled_mean(batch.correct[real]),
            "response/length_mean": float(lengths[real].mean()),
            "response/truncated_fraction": float(batch.truncated[real].mean()),
            "actor/kl_coef": s.kl_coef, **update_metrics, **prm_metrics, **adv_metrics,
            "rollout/entropy": entropy, "rollout/temperature": s.temperature,
            "rollout/max_new_tokens": float(max_len),
            **{f"time/{k}": v for k, v in t.items()},
            "perf/tokens_per_s": float(lengths[real].sum()) / max(t["rollout+reward"], 1e-9),
        })
        kl_coef = s.kl_coef
        if ref_logp is not None:
            kl = (kl_penalty(old_logp, ref_logp, cfg.algo.kl_type) * mask).sum() / max(mask.sum(), 1)
            metrics["actor/kl_to_ref"] = float(kl)
            if cfg.algo.kl_target > 0:
                kl_coef = float(adaptive_kl_update(kl_coef, float(kl), len(real), target=cfg.algo.kl_target,
                                                   horizon=cfg.algo.kl_horizon))
        self.state = RLState(
            params=params, opt_state=opt_state, prm=prm_state, step=s.step + 1, kl_coef=kl_coef,
            temperature=self._next_temperature(s.temperature, entropy),
            length_stage=observe_length(cfg.campo, cfg.engine.max_new_tokens, s.length_stage,
                                        metrics["response/length_mean"]),
            draws=draws)
        return metrics

    # -- collect --------------------------------------------------------------------------------

    def collect(self, state: RLState, max_len: int) -> tuple[StepBatch, dict, int]:
        """Rollouts for one step. With prompt filters (dynamic sampling, an EMPO entropy band,
        the objective's own), dropped groups are refilled by drawing more prompts, up to the
        filters' rounds; short of that, padding groups carry no loss. Returns the batch, its
        metrics and the prompt batches drawn so far."""
        want, n = self.cfg.trainer.prompts_per_step, self.cfg.algo.n
        sampling = sampling_config(self.cfg, state.temperature)
        parts, metrics, seen, kept, draws = [], {}, 0, 0, state.draws
        for r in range(self.rounds()):
            records = self.stream.batch(draws)
            draws += 1
            batch, round_metrics = self.sample(records, sampling, max_len, seed=_seed(self.seed, state.step, r))
            metrics = metrics or round_metrics
            seen += want
            keep = self.keep_groups(batch)
            kept += int(keep.sum())
            parts.append((batch, keep))
            if kept >= want:
                break
        metrics["filter/kept_fraction"] = kept / max(seen, 1)
        metrics["rollout/sequences"] = float(seen * n)
        return assemble(parts, want, n), metrics, draws

    def sample(self, records: list[dict], sampling: SamplingConfig, max_len: int, seed: int):
        """One round: rollouts, rewards, score shaping -> (StepBatch, metrics)."""
        gen = generate(self.engine, self.tokenizer, self.task.prompter.records(records), n=self.cfg.algo.n,
                       max_new_tokens=max_len, sampling=sampling, seed=seed, stop=self.stop)
        ro = gen.rollouts
        rows = [records[g] for g in ro.group_ids]
        scores, correct, metrics, per_fn = self.rewards(rows, gen.texts, group_ids=ro.group_ids)
        scores, correct, per_fn = hostio.same_on_all((scores, correct, per_fn))
        if "empo" in per_fn:
            metrics["empo/semantic_entropy"] = float(np.mean(entropy_from_rewards(per_fn["empo"], ro.group_ids)))
        truncated = np.asarray(ro.finish_reason) == "length"
        scores, shaping_metrics = shape_scores(self.cfg.campo, ro.response_ids, ro.response_mask, truncated, scores)
        a = self.cfg.algo
        if a.overlong_buffer:
            penalty = np.asarray(soft_overlong_penalty(ro.response_mask.sum(1), max_len=max_len,
                                                       buffer=min(a.overlong_buffer, max_len),
                                                       factor=a.overlong_penalty))
            scores = (scores + penalty).astype(np.float32)
            shaping_metrics["reward/overlong_penalty"] = float(penalty.mean())
        mask = ro.response_mask * (~truncated)[:, None] if self.cfg.algo.mask_truncated else ro.response_mask
        batch = StepBatch(records, ro.prompt_ids, ro.prompt_mask, ro.response_ids, mask.astype(np.int32),
                          ro.logprobs, ro.group_ids, scores, correct, truncated, per_fn,
                          lengths=ro.response_mask.sum(1).astype(np.int32))
        return batch, {**metrics, **shaping_metrics}

    def rounds(self) -> int:
        c = self.cfg
        refill = c.algo.dynamic_sampling or bool(c.rewards.empo.entropy_band)
        return max(1 + (c.algo.max_oversample_rounds if refill else 0), self.objective.rounds(c))

    def keep_groups(self, batch: StepBatch) -> np.ndarray:
        """Which of a round's groups may enter the batch, one bool per prompt: with dynamic
        sampling those whose rewards (or correctness) are not all equal; with an EMPO entropy
        band those whose semantic entropy lies inside it; and the objective's own filter."""
        cfg, n = self.cfg, self.cfg.algo.n
        if self.objective.needs_labels and np.isnan(batch.correct).any():
            raise ValueError(f"algo.advantage={cfg.algo.advantage} needs the verifier's accuracy, but some prompts "
                             "have no gold answer; set data.answer_field to the answer column")
        keep = np.ones(len(batch.records), bool)
        if cfg.algo.dynamic_sampling:
            s = (batch.correct if cfg.algo.dynamic_sampling_metric == "correct" else batch.scores).reshape(-1, n)
            keep &= ~np.all(s == s[:, :1], axis=1)
        band = cfg.rewards.empo.entropy_band
        if band:
            h = np.asarray(entropy_from_rewards(batch.per_fn["empo"], batch.group_ids)).reshape(-1, n)[:, 0]
            keep &= (h >= band[0] - 1e-6) & (h <= band[1] + 1e-6)  # float32: the bounds hold to 1e-6
        if self.objective.keep_groups is not None:
            keep &= self.objective.keep_groups(cfg, batch)
        return keep

    # -- score ----------------------------------------------------------------------------------

    def score(self, state: RLState, batch: StepBatch):
        """The actor's scoring pass (entropy, and old log-probs when recomputed) and the KL
        reference's: (device batch, old_logp BxR, ref_logp BxR or None, mean entropy)."""
        ids, mask, positions = layout.concat(batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                             batch.response_mask)
        host = {"ids": ids, "mask": mask, "positions": positions, "response_mask": batch.response_mask}
        # A greedy rollout is scored as a near-point mass.
        temperature = max(state.temperature, 1e-6)
        mesh = self.meshes.actor
        with jax.set_mesh(mesh):
            device = hostio.put_rows(host, mesh)
            logp, entropy = score_rows(score_with_entropy, self.graphdef, state.params, device, temperature, mesh,
                                       self.score_rows, batch.response_mask)
        recompute = self.cfg.algo.recompute_old_logprobs or sampling_config(self.cfg, state.temperature).truncates
        old_logp = np.asarray(logp if recompute else batch.logprobs, np.float32)
        ref_logp = None
        if self.ref_params is not None:
            mesh = self.meshes.reference
            with jax.set_mesh(mesh):
                ref_logp = np.asarray(score_rows(score, self.graphdef, self.ref_params, hostio.put_rows(host, mesh),
                                                 temperature, mesh, self.score_rows, batch.response_mask), np.float32)
        return device, old_logp, ref_logp, float(entropy)

    # -- update ---------------------------------------------------------------------------------

    def update(self, state: RLState, device: dict, old_logp, ref_logp, adv, max_len: int, loss_mask=None):
        """`trainer.epochs` passes of `trainer.mini_batches` optimizer steps over the tokens of
        `loss_mask` (default: the response mask): (params, opt_state, metrics)."""
        cfg, mesh = self.cfg, self.meshes.actor
        rows = device["ids"].shape[0]
        zeros = np.zeros_like(old_logp)
        host = {"old_logp": old_logp, "adv": np.asarray(adv, np.float32),
                "ref_logp": zeros if ref_logp is None else ref_logp}
        if loss_mask is not None:
            host["response_mask"] = np.asarray(loss_mask, np.int32)
        device = {**device, **hostio.put_rows(host, mesh)}
        spec = loss_spec(cfg, self.micro_batches, max_len)
        mini = rows // cfg.trainer.mini_batches
        rng = np.random.default_rng(_seed(self.seed, state.step, 99))
        params, opt_state = state.params, state.opt_state
        sums: dict[str, float] = {}
        count = 0
        temperature = jnp.float32(max(state.temperature, 1e-6))
        with jax.set_mesh(mesh):
            for _ in range(cfg.trainer.epochs):
                order = rng.permutation(rows)
                for i in range(cfg.trainer.mini_batches):
                    mb = hostio.take_rows(device, order[i * mini:(i + 1) * mini], mesh)
                    params, opt_state, m = train_step(self.graphdef, self.optimizer, spec, params, opt_state, mb,
                                                      jnp.float32(state.kl_coef), temperature)
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
        out = {k: float(v) / count for k, v in sums.items()}
        if not np.isfinite(out["actor/loss"]):
            raise FloatingPointError(f"step {state.step}: the actor loss is not finite ({out['actor/loss']}); "
                                     f"lower optim.lr, set optim.grad_clip, or check the rewards")
        return params, opt_state, out

    def _next_temperature(self, temperature: float, entropy: float) -> float:
        e = self.cfg.engine
        if not e.temperature_control:
            return temperature
        return float(temperature_step(temperature, entropy, target=e.target_entropy, rate=e.temperature_rate,
                                      min_temperature=e.min_temperature, max_temperature=e.max_temperature))

    # -- checkpoints ----------------------------------------------------------------------------

    def save(self, *, force: bool = False) -> None:
        if self.checkpointer is not None:
            self.checkpointer.save(self.state.step, self.state.arrays(), self.state.host(), force=force)

    def restore(self) -> bool:
        """Resume from the latest checkpoint if there is one; returns whether it did."""
        if self.checkpointer is None or self.checkpointer.latest_step() is None:
            return False
        _, arrays, host = self.checkpointer.restore(self.state.arrays())
        self.state = self.state.restored(arrays, host)
        self.engine.update_params(self.state.params)
        return True

    def sampling(self, temperature: float | None = None) -> SamplingConfig:
        return sampling_config(self.cfg, self.state.temperature if temperature is None else temperature)


def _labelled_mean(correct) -> float:
    """Accuracy over the rows with a gold answer (NaN when none has one)."""
    labelled = ~np.isnan(correct)
    return float(correct[labelled].mean()) if labelled.any() else float("nan")


def _seed(seed: int, step: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, step, salt]).generate_state(1)[0] & 0x7FFFFFFF)

