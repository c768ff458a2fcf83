"""Cross-field checks of the objective-specific config sections (called by `rlx.config.validate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlx.typed_tree import ConfigError

if TYPE_CHECKING:
    from rlx.config import Config


def check_objectives(cfg: Config) -> None:
    """Temperature control, CAMPO and PURE settings that a type alone cannot check."""
    e, c, a = cfg.engine, cfg.campo, cfg.algo
    if e.temperature_control:
        if e.temperature == 0:
            raise ConfigError("engine.temperature_control needs sampling: set engine.temperature > 0")
        if e.target_entropy <= 0 or e.temperature_rate <= 0:
            raise ConfigError(f"engine.target_entropy={e.target_entropy} and engine.temperature_rate="
                              f"{e.temperature_rate} must both be > 0")
        if not 0 < e.min_temperature <= e.max_temperature:
            raise ConfigError(f"need 0 < engine.min_temperature <= engine.max_temperature, got "
                              f"{e.min_temperature} and {e.max_temperature}")
    choices = {"algo.dynamic_sampling_metric": (a.dynamic_sampling_metric, ("score", "correct")),
               "campo.repetition_penalty": (c.repetition_penalty, ("none", "paper", "code")),
               "pure.step_score": (cfg.pure.step_score, ("prefix", "step")),
               "pure.prm": (cfg.pure.prm, ("implicit", "classifier")),
               "pure.weighting": (cfg.pure.weighting, ("min", "sum")),
               "pure.baseline": (cfg.pure.baseline, ("step", "token"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}='{value}' is not one of {', '.join(allowed)}")
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
    band = cfg.rewards.empo.entropy_band
    if band and (len(band) != 2 or not 0 <= band[0] <= band[1]):
        raise ConfigError(f"rewards.empo.entropy_band={list(band)} must be [low, high] with 0 <= low <= high "
                          f"(nats), or [] for no filter")
    if band and not any(spec.name == "empo" for spec in cfg.rewards.fns):
        raise ConfigError("rewards.empo.entropy_band filters on the empo reward's entropy; add "
                          "{name: empo} to rewards.fns or drop the band")
    if cfg.pure.prm == "classifier" and not cfg.pure.prm_path:
        raise ConfigError("pure.prm=classifier needs pure.prm_path: a PRM checkpoint directory")
    if cfg.pure.temperature <= 0 or cfg.pure.max_steps < 1 or not cfg.pure.separators:
        raise ConfigError("pure.temperature must be > 0, pure.max_steps >= 1 and pure.separators non-empty")
