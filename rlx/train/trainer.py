"""The RL trainer: rollout -> rewards -> reference log-probs -> advantages -> filtering ->
updates -> weight sync, one `step()` at a time, checkpointable between steps.

Every random choice in a step derives from (RL seed, step), so a run restored from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx import hostio
from rlx.checkpoint import Checkpointer
from rlx.config import Config, ConfigError
from rlx.data.pipeline import PromptStream
from rlx.engine import Engine, EngineConfig, SamplingConfig, rollout
from rlx.kernels import ADVANTAGE_FNS
from rlx.kernels.empo import entropy_from_rewards
from rlx.kernels.policy_loss import adaptive_kl_update, kl_penalty
from rlx.kernels.temperature import temperature_step
from rlx.train import batch as layout
from rlx.train import placement
from rlx.train.optim import adamw, init_state
from rlx.train.rewards import RewardScorer
from rlx.train.shaping import LengthSchedule, shape_scores
from rlx.train.update import LossSpec, score, score_with_entropy, train_step

OUTCOME_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline",
                      "w_reinforce", "psr", "nsr", "empo")


@dataclass
class StepBatch:
    """One step's rollouts, kept groups only, as fixed-shape host arrays."""

    records: list[dict]
    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    response_ids: np.ndarray
    response_mask: np.ndarray
    logprobs: np.ndarray
    group_ids: np.ndarray
    scores: np.ndarray
    correct: np.ndarray
    truncated: np.ndarray
    # EMPO's semantic entropy H_g of each row's group (None when the empo reward is not used).
    entropy: np.ndarray | None = None


def loss_spec(cfg: Config, micro_batches: int, max_len: int | None = None) -> LossSpec:
    a = cfg.algo
    return LossSpec(temperature=max(cfg.engine.temperature, 1e-6), eps_low=a.clip_low,
                    eps_high=a.clip_high, dual_clip=a.dual_clip or None, agg=a.loss_agg,
                    max_len=max_len or cfg.engine.max_new_tokens, kl_type=a.kl_type,
                    use_kl=a.kl_coef > 0 and not a.kl_in_reward, entropy_coef=a.entropy_coef,
                    micro_batches=micro_batches)


class RLTrainer:
    estimators = OUTCOME_ESTIMATORS  # what this class's `_advantages` handles (subclasses add)

    def __init__(self, cfg: Config, model: nnx.Module, task, *, checkpointer: Checkpointer | None = None):
        if cfg.algo.advantage not in self.estimators:
            raise ConfigError(f"algo.advantage='{cfg.algo.advantage}' is not available in the RL loop; "
                              f"choose one of {', '.join(self.estimators)}")
        self.cfg, self.task = cfg, task
        self.tokenizer = task.tokenizer
        self.graphdef, params = nnx.split(model)
        self.meshes = placement.role_meshes(cfg.mesh, params)
        # The engine keeps its own reference to the arrays it is given; the update donates
        # its inputs, so the trainer owns a separate copy.
        self.params = placement.copy_to(params, self.meshes.actor)
        needs_ref = cfg.algo.kl_coef > 0
        self.ref_params = placement.copy_to(params, self.meshes.reference) if needs_ref else None
        self.optimizer = adamw(cfg.optim.lr, cfg.trainer.steps * cfg.trainer.mini_batches * cfg.trainer.epochs,
                               warmup_steps=cfg.optim.warmup_steps, schedule=cfg.optim.schedule,
                               min_lr_ratio=cfg.optim.min_lr_ratio, weight_decay=cfg.optim.weight_decay,
                               b1=cfg.optim.b1, b2=cfg.optim.b2, eps=cfg.optim.eps,
                               grad_clip=cfg.optim.grad_clip)
        self.opt_state = init_state(self.optimizer, self.params)
        self.kl_coef = float(cfg.algo.kl_coef)
        self.step_count = 0
        batch = cfg.trainer.prompts_per_step * cfg.algo.n
        mini = batch // cfg.trainer.mini_batches
        micro = cfg.trainer.micro_batch_size or mini
        self.micro_batches = mini // micro
        self.spec = loss_spec(cfg, self.micro_batches)
        e = cfg.engine
        self.temperature = float(e.temperature)  # moved by engine.temperature_control
        self.lengths = LengthSchedule(cfg.campo, e.max_new_tokens)
        self.max_new_tokens = self.lengths.max_new_tokens(0)
        self.sampling = SamplingConfig(temperature=e.temperature, top_k=e.top_k, top_p=e.top_p, min_p=e.min_p)
        self.engine = Engine(model, EngineConfig(
            max_concurrent_decodes=e.max_concurrent_decodes, max_prefill_length=e.max_prefill_length,
            max_cache_len=e.max_cache_len, steps_per_sync=e.steps_per_sync, sampling=self.sampling,
            eos_ids=tuple(self.tokenizer.eos_ids)), mesh=self.meshes.engine)
        self.engine.update_params(self.params)
        self.seed = cfg.trainer.seed if cfg.trainer.seed >= 0 else cfg.run.seed
        self.stream = PromptStream(task.train, cfg.trainer.prompts_per_step, seed=self.seed,
                                   shuffle=cfg.data.shuffle)
        self.rewards = RewardScorer(cfg.rewards)
        self.checkpointer = checkpointer

    # -- one step ---------------------------------------------------------------------------

    def _sample(self, records: list[dict], seed: int):
        prompts = self.task.encode_prompts(records, self.cfg.data.template)
        ro = rollout(None, prompts, n=self.cfg.algo.n, max_new_tokens=self.max_new_tokens,
                     temperature=self.temperature, top_p=self.sampling.top_p,
                     top_k=self.sampling.top_k, min_p=self.sampling.min_p, seed=seed,
                     stop=self.cfg.engine.stop, tokenizer=self.tokenizer, engine=self.engine)
        texts = [self.tokenizer.decode(r[m.astype(bool)].tolist())
                 for r, m in zip(ro.response_ids, ro.response_mask)]
        rows = [records[g] for g in ro.group_ids]
        scores, correct, reward_metrics, per_fn = self.rewards(rows, texts, group_ids=ro.group_ids)
        entropy = np.asarray(entropy_from_rewards(per_fn["empo"], ro.group_ids)) if "empo" in per_fn else None
        scores, correct, entropy = hostio.same_on_all((scores, correct, entropy))
        if entropy is not None:
            reward_metrics = {**reward_metrics, "empo/semantic_entropy": float(entropy.mean())}
        truncated = np.asarray(ro.finish_reason) == "length"
        scores, shaping_metrics = shape_scores(self.cfg.campo, ro.response_ids, ro.response_mask,
                                               truncated, scores)
        reward_metrics = {**reward_metrics, **shaping_metrics}
        if self.cfg.algo.mask_truncated:
            ro_mask = ro.response_mask * (~truncated)[:, None]
        else:
            ro_mask = ro.response_mask
        return StepBatch(records, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro_mask.astype(np.int32),
                         ro.logprobs, ro.group_ids, scores, correct, truncated, entropy), reward_metrics

    def _collect(self, step: int) -> tuple[StepBatch, dict]:
        """Rollouts for one step; with dynamic sampling, drop groups whose rewards are all
        equal and draw more prompts (up to `max_oversample_rounds`) to refill the batch."""
        want = self.cfg.trainer.prompts_per_step
        n = self.cfg.algo.n
        parts, metrics, seen, kept = [], {}, 0, 0
        for r in range(self._sampling_rounds()):
            sb, metrics_r = self._sample(self.stream.next(), seed=_seed(self.seed, step, r))
            metrics = metrics or metrics_r
            seen += want
            keep = self._keep_groups(sb)
            kept += int(keep.sum())
            parts.append((sb, keep))
            if kept >= want:
                break
        metrics["filter/kept_fraction"] = kept / max(seen, 1)
        metrics["rollout/sequences"] = float(seen * n)
        return _assemble(parts, want, n), metrics

    def _sampling_rounds(self) -> int:
        """Most rounds of prompts `_collect` draws to fill a step (a hook for subclasses)."""
        refill = self.cfg.algo.dynamic_sampling or bool(self.cfg.rewards.empo.entropy_band)
        return 1 + (self.cfg.algo.max_oversample_rounds if refill else 0)

    def _keep_groups(self, sb: StepBatch) -> np.ndarray:
        """Which of a round's groups may enter the batch, one bool per prompt (a hook for
        subclasses): with dynamic sampling, those whose rewards (or correctness) are not all
        equal; with an EMPO entropy band, those whose semantic entropy lies inside it."""
        want, n = self.cfg.trainer.prompts_per_step, self.cfg.algo.n
        keep = np.ones(want, bool)
        if self.cfg.algo.dynamic_sampling:
            s = (sb.correct if self.cfg.algo.dynamic_sampling_metric == "correct" else sb.scores).reshape(want, n)
            keep &= ~np.all(s == s[:, :1], axis=1)
        band = self.cfg.rewards.empo.entropy_band
        if band:
            h = sb.entropy.reshape(want, n)[:, 0]  # float32: the bounds hold to 1e-6
            keep &= (h >= band[0] - 1e-6) & (h <= band[1] + 1e-6)
        return keep

    def step(self) -> dict:
        cfg, t = self.cfg, {}
        step = self.step_count
        self._set_max_new_tokens(self.lengths.max_new_tokens(step))
        temperature = self.temperature
        t0 = time.perf_counter()
        sb, metrics = self._collect(step)
        t["rollout+reward"] = time.perf_counter() - t0
        p_ids, p_mask = sb.prompt_ids, sb.prompt_mask
        ids, mask, positions = layout.concat(p_ids, p_mask, sb.response_ids, sb.response_mask)
        resp_mask = sb.response_mask
        host = {"ids": ids, "mask": mask, "positions": positions, "response_mask": resp_mask}
        device = hostio.put_rows(host, self.meshes.actor)
        t0 = time.perf_counter()
        # One scoring pass of the rollout policy gives the entropy that temperature control
        # steers and, when asked, the old log-probs recomputed at training precision.
        t_score = max(temperature, 1e-6)  # a greedy rollout is scored as a near-point mass
        logp, entropy = score_with_entropy(self.graphdef, self.params, device, t_score)
        entropy = float(hostio.get(entropy))
        old_logp = hostio.get(logp) if cfg.algo.recompute_old_logprobs else sb.logprobs
        ref_logp = np.zeros_like(old_logp)
        if self.ref_params is not None:
            ref_logp = hostio.get(score(self.graphdef, self.ref_params, hostio.put_rows(host, self.meshes.reference),
                                        t_score))
        t["scoring"] = time.perf_counter() - t0
        adv = self._advantages(sb, old_logp, ref_logp, resp_mask)
        t0 = time.perf_counter()
        device.update(hostio.put_rows({"old_logp": np.asarray(old_logp, np.float32), "adv": np.asarray(adv, np.float32),
                                       "ref_logp": np.asarray(ref_logp, np.float32)}, self.meshes.actor))
        update_metrics = self._update(device, step, t_score)
        t["update"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.engine.update_params(self.params)
        t["sync"] = time.perf_counter() - t0
        self.step_count += 1
        lengths = sb.response_mask.sum(1)
        real = sb.group_ids >= 0
        metrics.update({
            "reward/mean": float(sb.scores[real].mean()), "reward/accuracy": float(sb.correct[real].mean()),
            "response/length_mean": float(lengths[real].mean()),
            "response/truncated_fraction": float(sb.truncated[real].mean()),
            "actor/kl_coef": self.kl_coef, **update_metrics,
            "rollout/entropy": entropy, "rollout/temperature": temperature,
            "rollout/max_new_tokens": float(self.max_new_tokens),
            **{f"time/{k}": v for k, v in t.items()},
            "perf/tokens_per_s": float(lengths.sum()) / max(t["rollout+reward"], 1e-9),
        })
        if self.ref_params is not None:
            kl = (kl_penalty(old_logp, ref_logp, cfg.algo.kl_type) * resp_mask).sum() / max(resp_mask.sum(), 1)
            metrics["actor/kl_to_ref"] = float(kl)
            if cfg.algo.kl_target > 0:
                self.kl_coef = float(adaptive_kl_update(self.kl_coef, float(kl), len(real),
                                                        target=cfg.algo.kl_target, horizon=cfg.algo.kl_horizon))
        if cfg.engine.temperature_control:
            e = cfg.engine
            self.temperature = float(temperature_step(
                temperature, entropy, target=e.target_entropy, rate=e.temperature_rate,
                min_temperature=e.min_temperature, max_temperature=e.max_temperature))
        self.lengths.observe(metrics["response/length_mean"])
        return metrics

    def _set_max_new_tokens(self, length: int) -> None:
        """Enter a response-length stage: the rollout's and the loss's maximum length."""
        if length != self.max_new_tokens:
            self.max_new_tokens = length
            self.spec = loss_spec(self.cfg, self.micro_batches, max_len=length)

    def _advantages(self, sb: StepBatch, old_logp, ref_logp, resp_mask) -> np.ndarray:
        a = self.cfg.algo
        kwargs = {"mask_BxL": jnp.asarray(resp_mask), "group_ids_B": jnp.asarray(sb.group_ids)}
        hyper = {"w_reinforce": {"lam": a.w_reinforce_lambda}, "reinforce_pp": {"gamma": a.gamma}}
        if a.kl_coef > 0 and a.kl_in_reward:
            last = resp_mask * (np.cumsum(resp_mask[:, ::-1], 1)[:, ::-1] == 1)
            kl = np.asarray(kl_penalty(old_logp, ref_logp, a.kl_type)) * resp_mask
            kwargs["token_rewards_BxL"] = jnp.asarray(sb.scores[:, None] * last - self.kl_coef * kl)
        else:
            kwargs["scores_B"] = jnp.asarray(sb.scores, jnp.float32)
        adv, _ = ADVANTAGE_FNS[a.advantage](**kwargs, **hyper.get(a.advantage, {}))
        return np.asarray(adv) * resp_mask

    def _update(self, device: dict, step: int, temperature: float) -> dict:
        cfg = self.cfg
        batch = device["ids"].shape[0]
        mini = batch // cfg.trainer.mini_batches
        rng = np.random.default_rng(_seed(self.seed, step, 99))
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.trainer.epochs):
            order = rng.permutation(batch)
            for i in range(cfg.trainer.mini_batches):
                mb = hostio.take_rows(device, order[i * mini:(i + 1) * mini], self.meshes.actor)
                self.params, self.opt_state, m = train_step(
                    self.graphdef, self.optimizer, self.spec, self.params, self.opt_state, mb,
                    jnp.float32(self.kl_coef), jnp.float32(temperature))
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        out = {k: float(v) / count for k, v in sums.items()}
        if not np.isfinite(out["actor/loss"]):
            raise FloatingPointError(f"step {step}: the actor loss is not finite ({out['actor/loss']}); "
                                     f"lower optim.lr, set optim.grad_clip, or check the rewards")
        return out

    # -- checkpoints ------------------------------------------------------------------------

    def train_state(self) -> dict:
        return {"params": self.params, "opt_state": self.opt_state}

    def set_train_state(self, state: dict) -> None:
        """Adopt a restored `train_state()` (subclasses with more roles extend both)."""
        self.params, self.opt_state = state["params"], state["opt_state"]

    def save(self, *, force: bool = False) -> None:
        if self.checkpointer is not None:
            host = {"step": self.step_count, "data": self.stream.get_state(), "kl_coef": self.kl_coef,
                    "temperature": self.temperature, "length_stage": self.lengths.get_state()}
            self.checkpointer.save(self.step_count, self.train_state(), host, force=force)

    def restore(self) -> bool:
        """Resume from the latest checkpoint if there is one; returns whether it did."""
        if self.checkpointer is None or self.checkpointer.latest_step() is None:
            return False
        _, state, host = self.checkpointer.restore(self.train_state())
        self.set_train_state(state)
        self.step_count = int(host["step"])
        self.kl_coef = float(host["kl_coef"])
        self.temperature = float(host.get("temperature", self.temperature))
        self.lengths.set_state(host.get("length_stage"))
        self.stream.set_state(host["data"])
        self.engine.update_params(self.params)
        return True


def _seed(seed: int, step: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, step, salt]).generate_state(1)[0] & 0x7FFFFFFF)


def _assemble(parts: list[tuple[StepBatch, np.ndarray]], want: int, n: int) -> StepBatch:
    """The first `want` kept groups; short of that, padding groups (group id -1, no loss)."""
    rows, records = [], []
    for sb, keep in parts:
        for g in np.flatnonzero(keep):
            if len(records) < want:
                rows.append((sb, np.arange(g * n, (g + 1) * n), len(records)))
                records.append(sb.records[g])
    sb0 = parts[0][0]
    while len(records) < want:  # refill with dropped groups, masked out of the loss
        g = len(records)
        rows.append((sb0, np.arange(g * n, (g + 1) * n), -1))
        records.append(sb0.records[g % len(sb0.records)])
    fields = {}
    names = ["prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs", "scores", "correct",
             "truncated"] + (["entropy"] if parts[0][0].entropy is not None else [])
    for name in names:
        arrays = [getattr(sb, name)[idx] for sb, idx, _ in rows]
        if name in ("prompt_ids", "prompt_mask"):
            width = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, ((0, 0), (width - a.shape[1], 0))) for a in arrays]
        fields[name] = np.concatenate(arrays)
    group_ids = np.concatenate([np.full(n, gid, np.int32) for _, _, gid in rows])
    fields["response_mask"] = fields["response_mask"] * (group_ids >= 0)[:, None]
    return StepBatch(records=records, group_ids=group_ids, **fields)
