"""Every config value checked when the config loads, against the registries the run uses, so
`--print-config` and the first second of a run catch what the run would hit minutes later
(called by `rlx.config.validate`). Each error names the key and what to change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlx.typed_tree import ConfigError

if TYPE_CHECKING:
    from rlx.config import Config


def one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}='{value}' is not one of {', '.join(map(str, allowed))}")


def check_sections(cfg: Config) -> None:
    check_shapes(cfg)
    check_model(cfg)
    check_data(cfg)
    check_sampling(cfg)
    check_algo(cfg)
    check_rewards(cfg)
    check_prime_pure(cfg)
    check_campo(cfg)


def check_shapes(cfg: Config) -> None:
    """The job kind, counts, batch divisibility, role meshes, cache length and plan topology."""
    from rlx.config import KINDS, TOPOLOGY_NAME

    if cfg.run.kind not in KINDS:
        raise ConfigError(f"run.kind='{cfg.run.kind}' is not a job kind; choose one of {', '.join(KINDS)}")
    positive = {"algo.n": cfg.algo.n, "trainer.prompts_per_step": cfg.trainer.prompts_per_step,
                "trainer.mini_batches": cfg.trainer.mini_batches, "trainer.epochs": cfg.trainer.epochs,
                "engine.max_new_tokens": cfg.engine.max_new_tokens,
                "engine.max_concurrent_decodes": cfg.engine.max_concurrent_decodes}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}={value} must be >= 1")
    if cfg.trainer.steps < 0:
        raise ConfigError(f"trainer.steps={cfg.trainer.steps} must be >= 0")
    if cfg.engine.temperature < 0:
        raise ConfigError(f"engine.temperature={cfg.engine.temperature} must be >= 0 (0 = greedy)")
    if not 0 < cfg.engine.top_p <= 1:
        raise ConfigError(f"engine.top_p={cfg.engine.top_p} must be in (0, 1]")
    batch = cfg.trainer.prompts_per_step * cfg.algo.n
    if batch % cfg.trainer.mini_batches:
        raise ConfigError(f"trainer.prompts_per_step * algo.n = {batch} responses do not split into "
                          f"trainer.mini_batches={cfg.trainer.mini_batches} equal mini-batches")
    if cfg.trainer.micro_batch_size and (batch // cfg.trainer.mini_batches) % cfg.trainer.micro_batch_size:
        raise ConfigError(f"mini-batch of {batch // cfg.trainer.mini_batches} responses is not a multiple "
                          f"of trainer.micro_batch_size={cfg.trainer.micro_batch_size}")
    m = cfg.mesh
    if m.roles not in ("colocated", "disaggregated"):
        raise ConfigError(f"mesh.roles='{m.roles}' is not one of colocated, disaggregated")
    for role in ("engine", "reference", "prm"):
        n = getattr(m, role).devices
        if n < 0 or (n and m.roles == "colocated"):
            raise ConfigError(f"mesh.{role}.devices={n}: set it to 0 (the actor's mesh), or give the {role} "
                              f"its own devices with mesh.roles=disaggregated")
    longest = max((cfg.engine.max_new_tokens, *cfg.campo.max_lengths))
    if cfg.engine.max_prefill_length + longest > cfg.engine.max_cache_len:
        raise ConfigError(f"engine.max_cache_len={cfg.engine.max_cache_len} is smaller than "
                          f"max_prefill_length + the longest response ({longest}) = "
                          f"{cfg.engine.max_prefill_length + longest}; raise it")
    if cfg.plan.topology and not TOPOLOGY_NAME.match(cfg.plan.topology):
        raise ConfigError(f"plan.topology='{cfg.plan.topology}' is not a TPU topology name; give "
                          f"GENERATION:AxBxC, e.g. v5p:2x2x1 (4 chips), v5p:4x4x2 (32 chips), "
                          f"v5e:16x16 (256 chips), v6e:4x4, v4:2x2x2, or '' for the local devices")


def check_model(cfg: Config) -> None:
    from rlx.models.config import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES
    from rlx.train.optim import SCHEDULES

    m = cfg.model
    one_of("model.dtype", m.dtype, DTYPES)
    one_of("model.param_dtype", m.param_dtype, DTYPES)
    one_of("model.remat", m.remat, REMAT_POLICIES)
    one_of("model.attention", m.attention, ATTENTION_IMPLS)
    if m.logits_chunk < 0:
        raise ConfigError(f"model.logits_chunk={m.logits_chunk} must be >= 0 (0 = the whole response at once)")
    one_of("optim.schedule", cfg.optim.schedule, SCHEDULES)
    o = cfg.optim
    if o.lr < 0 or o.warmup_updates < 0 or not 0 <= o.min_lr_ratio <= 1 or o.grad_clip < 0:
        raise ConfigError(f"optim.lr={o.lr} must be >= 0 (0 freezes the policy), optim.warmup_updates={o.warmup_updates} >= 0, "
                          f"optim.min_lr_ratio={o.min_lr_ratio} in [0, 1] and optim.grad_clip={o.grad_clip} "
                          ">= 0 (0 = no clipping)")


def check_data(cfg: Config) -> None:
    from rlx.data.templates import CHAT_TEMPLATES, TEMPLATES

    d = cfg.data
    one_of("data.template", d.template, TEMPLATES)
    style = cfg.tokenizer.chat_style
    if style:
        from rlx.models.chat import STYLES

        one_of("tokenizer.chat_style", style, sorted(STYLES))
        if d.template in CHAT_TEMPLATES:
            raise ConfigError(f"data.template='{d.template}' already renders a chat prompt; leave "
                              "tokenizer.chat_style empty or use data.template=plain or boxed")
    if d.task not in ("arith", "jsonl", "parquet", "json"):
        from rlx.data.loaders import ALIASES, EVAL_SETS

        if d.task not in EVAL_SETS and d.task not in ALIASES:
            raise ConfigError(f"data.task='{d.task}' is not known: use 'arith' (built-in), 'jsonl' / 'parquet' "
                              f"with data.path, or an evaluation set ({', '.join(EVAL_SETS)})")
    elif d.task != "arith" and not d.path:
        raise ConfigError(f"data.task={d.task} needs data.path (a .jsonl / .parquet prompt set)")
    if d.max_prompt_len < 0 or d.max_prompt_len > cfg.engine.max_prefill_length:
        raise ConfigError(f"data.max_prompt_len={d.max_prompt_len} must be between 0 (= engine.max_prefill_length) "
                          f"and engine.max_prefill_length={cfg.engine.max_prefill_length}, the longest prompt the "
                          "engine takes; raise engine.max_prefill_length too")


def check_sampling(cfg: Config) -> None:
    e = cfg.engine
    if e.top_k < 0 or not 0 <= e.min_p < 1:
        raise ConfigError(f"engine.top_k={e.top_k} must be >= 0 (0 = off) and engine.min_p={e.min_p} in [0, 1)")
    if e.steps_per_sync < 1 or e.max_prefill_length < 1:
        raise ConfigError(f"engine.steps_per_sync={e.steps_per_sync} and engine.max_prefill_length="
                          f"{e.max_prefill_length} must be >= 1")
    if e.temperature_control:
        if e.temperature == 0:
            raise ConfigError("engine.temperature_control needs sampling: set engine.temperature > 0")
        if e.target_entropy <= 0 or e.temperature_rate <= 0:
            raise ConfigError(f"engine.target_entropy={e.target_entropy} and engine.temperature_rate="
                              f"{e.temperature_rate} must both be > 0")
        if not 0 < e.min_temperature <= e.max_temperature:
            raise ConfigError(f"need 0 < engine.min_temperature <= engine.max_temperature, got "
                              f"{e.min_temperature} and {e.max_temperature}")


def check_algo(cfg: Config) -> None:
    from rlx.kernels.aggregation import AGGREGATIONS
    from rlx.kernels.policy_loss import KL_TYPES
    from rlx.train.objectives import get_objective

    a = cfg.algo
    objective = get_objective(a.advantage)
    one_of("algo.loss_agg", a.loss_agg, AGGREGATIONS)
    one_of("algo.kl_type", a.kl_type, KL_TYPES)
    one_of("algo.dynamic_sampling_metric", a.dynamic_sampling_metric, ("score", "correct"))
    if a.kl_coef < 0 or a.entropy_coef < 0 or a.clip_low < 0 or a.clip_high < 0:
        raise ConfigError(f"algo.kl_coef={a.kl_coef}, algo.entropy_coef={a.entropy_coef}, algo.clip_low={a.clip_low} "
                          f"and algo.clip_high={a.clip_high} must be >= 0")
    if a.dual_clip and a.dual_clip <= 1:
        raise ConfigError(f"algo.dual_clip={a.dual_clip} must be > 1 (dual-clip PPO's c), or 0 for off")
    if a.kl_in_reward and a.kl_coef > 0 and not objective.kl_in_reward:
        raise ConfigError(f"algo.advantage={a.advantage} does not take the KL in its rewards; set "
                          "algo.kl_in_reward=false to use the KL as a loss term")
    if a.options and not objective.reads_options:
        raise ConfigError(f"algo.options is read only by your own estimators (algo.advantage=module:function); "
                          f"{a.advantage} takes its settings from named keys -- drop algo.options")
    if a.overlong_buffer < 0 or a.overlong_buffer > cfg.engine.max_new_tokens or a.overlong_penalty < 0:
        raise ConfigError(f"algo.overlong_buffer={a.overlong_buffer} must be in 0..engine.max_new_tokens="
                          f"{cfg.engine.max_new_tokens} (0 = off) and algo.overlong_penalty={a.overlong_penalty} >= 0")
    if a.max_oversample_rounds < 0:
        raise ConfigError(f"algo.max_oversample_rounds={a.max_oversample_rounds} must be >= 0")
    objective.check(cfg)


def check_rewards(cfg: Config) -> None:
    from rlx.rewards import resolve_reward

    r = cfg.rewards
    if not r.fns:
        raise ConfigError("rewards.fns is empty; name at least one reward, e.g. rewards.fns=[{name: math}]")
    for spec in r.fns:
        resolve_reward(spec.name)
    if r.timeout <= 0 or r.workers < 0:
        raise ConfigError(f"rewards.timeout={r.timeout} must be > 0 seconds and rewards.workers={r.workers} "
                          ">= 0 (0 = in-process, no time limit)")
    band = r.empo.entropy_band
    if band and (len(band) != 2 or not 0 <= band[0] <= band[1]):
        raise ConfigError(f"rewards.empo.entropy_band={list(band)} must be [low, high] with 0 <= low <= high "
                          f"(nats), or [] for no filter")
    if band and not any(spec.name == "empo" for spec in r.fns):
        raise ConfigError("rewards.empo.entropy_band filters on the empo reward's entropy; add "
                          "{name: empo} to rewards.fns or drop the band")
    if any(spec.name == "empo" for spec in r.fns):
        from rlx.rewards import empo as empo_rewards

        if r.empo.equivalence not in empo_rewards.EQUIVALENCES:
            try:  # fail at load, not in a worker mid-run
                empo_rewards.load_judge(r.empo.equivalence)
            except ValueError as err:
                raise ConfigError(str(err)) from None


def check_prime_pure(cfg: Config) -> None:
    """The sections' enums, checked whichever objective runs, so a typo never waits."""
    from rlx.kernels.prime import GRANULARITIES
    from rlx.train.prm import PRM_ROLES
    from rlx.train.prm_format import PRM_FORMATS

    p, pu = cfg.prime, cfg.pure
    one_of("prime.update", p.update, ("before", "after"))
    one_of("prime.reference", p.reference, ("sft", "old_policy"))
    one_of("prime.granularity", p.granularity, GRANULARITIES)
    if p.prm_lr <= 0 or p.beta <= 0:
        raise ConfigError(f"prime.prm_lr={p.prm_lr} and prime.beta={p.beta} must be > 0")
    one_of("pure.prm", pu.prm, PRM_ROLES)
    one_of("pure.step_score", pu.step_score, ("prefix", "step"))
    one_of("pure.weighting", pu.weighting, ("min", "sum"))
    one_of("pure.baseline", pu.baseline, ("step", "token"))
    one_of("pure.prm_format", pu.prm_format, PRM_FORMATS)
    if pu.temperature <= 0 or pu.max_steps < 1 or not pu.separators:
        raise ConfigError("pure.temperature must be > 0, pure.max_steps >= 1 and pure.separators non-empty")


def check_campo(cfg: Config) -> None:
    c = cfg.campo
    one_of("campo.repetition_penalty", c.repetition_penalty, ("none", "paper", "code"))
    if c.max_lengths:
        if any(n < 1 for n in c.max_lengths):
            raise ConfigError(f"campo.max_lengths={list(c.max_lengths)} must all be >= 1")
        if c.boundaries and len(c.boundaries) != len(c.max_lengths) - 1:
            raise ConfigError(f"campo.boundaries={list(c.boundaries)} needs len(campo.max_lengths) - 1 = "
                              f"{len(c.max_lengths) - 1} steps (or none, to advance on saturation)")
    elif c.boundaries:
        raise ConfigError("campo.boundaries is set but campo.max_lengths is empty; list the stage lengths")
    if c.loop_min_repeats < 2:
        raise ConfigError(f"campo.loop_min_repeats={c.loop_min_repeats} must be >= 2")
