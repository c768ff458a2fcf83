"""Objectives as data: one registry that the trainer and the config check both read.

An `Objective` is a small record -- its advantage function, the config checks it needs, the
PRM role it brings, its prompt filter -- and the one trainer (`rlx.train.trainer`) runs any of
them without branching on the name. `algo.advantage` names a registered objective, or a
`module:attribute` that is imported on load: an `Objective`, or a plain estimator function

    def my_estimator(*, scores_B, group_ids_B, mask_BxL, **options) -> adv_BxL

whose options come from `algo.options` (README: "Your own estimator").

The built-in outcome estimators are the kernels of `rlx.kernels.ADVANTAGE_FNS` with their
hyper-parameters read from the `algo` section; PRIME and PURE register themselves from
`rlx.train.prime` and `rlx.train.pure`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import TYPE_CHECKING, Any, Callable

import jax.numpy as jnp
import numpy as np

from rlx.typed_tree import ConfigError, load_attribute

if TYPE_CHECKING:
    from rlx.config import Config
    from rlx.train.batch import StepBatch


@dataclasses.dataclass(frozen=True)
class AdvantageInputs:
    """What an advantage function sees of one step (host arrays, B rows x L response tokens)."""

    cfg: Config
    batch: StepBatch
    mask_BxL: np.ndarray  # the response tokens that carry loss (after algo.mask_truncated)
    old_logp_BxL: np.ndarray  # the rollout policy's log-probs at the rollout temperature
    ref_logp_BxL: np.ndarray | None  # the KL reference's, when algo.kl_coef > 0
    kl_coef: float
    prm: dict  # the PRM role's outputs for this batch ({} without a PRM)
    tokenizer: Any


def _nothing(cfg: Config) -> None:
    del cfg


def _no_prm(cfg: Config) -> str | None:
    del cfg


def _one_round(cfg: Config) -> int:
    del cfg
    return 1


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    # (inputs) -> (advantages BxL, metrics); zero outside inputs.mask_BxL.
    advantages: Callable[[AdvantageInputs], tuple[np.ndarray, dict]]
    # Raises ConfigError (naming the fix) for settings this objective cannot run with.
    check: Callable[[Config], None] = _nothing
    # The PRM role it brings: a key of rlx.train.prm.PRM_ROLES, or None.
    prm: Callable[[Config], str | None] = _no_prm
    # Prompt filter: (cfg, batch of one round) -> keep, one bool per group; None = keep all.
    keep_groups: Callable[[Config, StepBatch], np.ndarray] | None = None
    # Rounds of prompts drawn at most to fill a step through `keep_groups`.
    rounds: Callable[[Config], int] = _one_round
    # Needs every prompt's gold answer (the verifier's correctness enters the advantage).
    needs_labels: bool = False
    # Accepts algo.kl_in_reward (the KL penalty subtracted from the token rewards).
    kl_in_reward: bool = False
    # Rows that stay in the loss, (inputs) -> bool per row; None = all. Rows outside leave the
    # batch: no loss, no entropy bonus, and no place in a token-mean denominator.
    loss_rows: Callable[[AdvantageInputs], np.ndarray] | None = None
    # Takes its settings from `algo.options` (your own estimators) rather than named keys.
    reads_options: bool = False


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    if objective.name in OBJECTIVES and OBJECTIVES[objective.name] is not objective:
        raise ValueError(f"an objective named {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective
    return objective


def estimator_objective(fn: Callable, name: str, hyper: Callable[[Config], dict] | None = None,
                        loss_rows: Callable[[AdvantageInputs], np.ndarray] | None = None) -> Objective:
    """An outcome estimator `fn(*, scores_B, group_ids_B, mask_BxL, **hyper)` as an objective.

    `fn` returns adv_BxL (or (adv_BxL, returns_BxL), as the kernels do). Its hyper-parameters
    are `hyper(cfg)`, by default `algo.options`. With `algo.kl_in_reward` it gets the token
    rewards (score on the last token minus kl_coef x KL) as `token_rewards_BxL` instead of
    `scores_B`, if it takes that argument.
    """
    params = inspect.signature(fn).parameters
    takes_tokens = "token_rewards_BxL" in params
    hyper = hyper or _options

    def advantages(x: AdvantageInputs) -> tuple[np.ndarray, dict]:
        a, mask = x.cfg.algo, x.mask_BxL
        kwargs = {"mask_BxL": jnp.asarray(mask), "group_ids_B": jnp.asarray(x.batch.group_ids)}
        if a.kl_in_reward and a.kl_coef > 0:
            from rlx.kernels.policy_loss import kl_penalty

            last = mask * (np.cumsum(mask[:, ::-1], 1)[:, ::-1] == 1)
            kl = np.asarray(kl_penalty(x.old_logp_BxL, x.ref_logp_BxL, a.kl_type)) * mask
            kwargs["token_rewards_BxL"] = jnp.asarray(x.batch.scores[:, None] * last - x.kl_coef * kl)
        else:
            kwargs["scores_B"] = jnp.asarray(x.batch.scores, jnp.float32)
        out = fn(**kwargs, **hyper(x.cfg))
        adv = out[0] if isinstance(out, tuple) else out
        adv = np.asarray(adv, np.float32)
        if adv.shape != mask.shape:
            raise ValueError(f"estimator {name!r} returned advantages of shape {adv.shape}; expected "
                             f"{mask.shape} (rows x response tokens)")
        return adv * mask, {}

    def check(cfg: Config) -> None:
        if cfg.algo.kl_in_reward and cfg.algo.kl_coef > 0 and not takes_tokens:
            raise ConfigError(f"algo.advantage={name} takes outcome scores only, so algo.kl_in_reward cannot "
                              "add the KL to its rewards; set algo.kl_in_reward=false (KL as a loss term)")
        _check_options(fn, name, hyper(cfg), params)

    return Objective(name, advantages, check=check, kl_in_reward=takes_tokens, loss_rows=loss_rows,
                     reads_options=hyper is _options)


def register_estimator(name: str | None = None, *, hyper: Callable[[Config], dict] | None = None):
    """Decorator: register an outcome estimator under `name` (default: the function's name)."""

    def wrap(fn: Callable) -> Callable:
        register_objective(estimator_objective(fn, name or fn.__name__, hyper))
        return fn

    return wrap


def _options(cfg: Config) -> dict:
    return dict(cfg.algo.options)


def _check_options(fn: Callable, name: str, options: dict, params) -> None:
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    known = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY or p.default is not p.empty]
    known = [k for k in known if k not in ("scores_B", "token_rewards_BxL", "values_BxL", "mask_BxL",
                                           "group_ids_B")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"algo.options {unknown} are not options of estimator {name!r}; it takes "
                          f"{', '.join(known) or 'none'}")


# -- lookup ------------------------------------------------------------------------------------

_BUILTIN_MODULES = ("rlx.train.prime", "rlx.train.pure")


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def objective_names() -> list[str]:
    _load_builtins()
    return sorted(OBJECTIVES)


def get_objective(name: str) -> Objective:
    """A registered objective, or `module:attribute` imported (an Objective or an estimator)."""
    _load_builtins()
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    if ":" in name:
        target = load_attribute(name, "algo.advantage")
        if isinstance(target, Objective):
            return target
        if callable(target):
            return estimator_objective(target, name)
        raise ConfigError(f"algo.advantage={name} is neither an Objective nor a function")
    raise ConfigError(f"algo.advantage='{name}' is not an objective; choose one of "
                      f"{', '.join(objective_names())}, or name your own as module:function")


# -- the built-in outcome estimators -----------------------------------------------------------


def _register_outcome(name: str, hyper: Callable[[Config], dict] = lambda cfg: {}, loss_rows=None) -> None:
    from rlx.kernels import ADVANTAGE_FNS

    register_objective(estimator_objective(ADVANTAGE_FNS[name], name, hyper, loss_rows))


for _name in ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "empo"):
    _register_outcome(_name)
# RLVR-Decomposed trains PSR on the correct samples only and NSR on the incorrect ones: the
# others leave the batch rather than staying in it with advantage 0.
_register_outcome("psr", loss_rows=lambda x: x.batch.scores > 0)
_register_outcome("nsr", loss_rows=lambda x: x.batch.scores <= 0)
_register_outcome("w_reinforce", lambda cfg: {"lam": cfg.algo.w_reinforce_lambda})
_register_outcome("reinforce_pp", lambda cfg: {"gamma": cfg.algo.gamma})
