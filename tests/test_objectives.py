"""Objectives as data: every config mistake fails at load, before any model exists; an estimator
and a reward in a user's own file run through the one trainer; the PPO ratio's old log-probs
are the full tempered distribution's whatever the sampler truncates; the trainer's jitted
programs run under their role's mesh."""

import sys
import textwrap

import jax
import numpy as np
import pytest

from rlx import launch
from rlx.build import build_model
from rlx.config import ConfigError, load_config
from rlx.train import objectives
from rlx.train.task import build_task
from rlx.train.trainer import RLTrainer

from test_rl_loop import SMALL

QUICKSTART = "configs/quickstart.yaml"

MISTAKES = [
    ("algo.advantage=grp0", "algo.advantage='grp0' is not an objective"),
    ("algo.loss_agg=tokenmean", "algo.loss_agg='tokenmean'"),
    ("algo.kl_type=k9", "algo.kl_type='k9'"),
    ("prime.update=durng", "prime.update='durng'"),
    ("rewards.fns=[{name: maths}]", "unknown reward 'maths'"),
    ("algo.lam=1.0", "unknown config key 'algo.lam'"),
    ("trainer.log_every=5", "unknown config key 'trainer.log_every'"),
    ("data.max_prompt_len=4096", "data.max_prompt_len=4096"),
    ("data.task=foo", "data.task='foo' is not known"),
    ("data.template=qwen25-math-cot | tokenizer.chat_style=qwen2.5", "already renders a chat prompt"),
    ("algo.options={scale: 2.0}", "algo.options is read only by your own estimators"),
    ("algo.advantage=no_such_module:fn", "cannot import 'no_such_module'"),
    ("rewards.fns=[{name: json:nothing_here}]", "has no attribute 'nothing_here'"),
    ("optim.schedule=cosin", "optim.schedule='cosin'"),
    ("model.remat=ful", "model.remat='ful'"),
    ("algo.advantage=pure | pure.weighting=max", "pure.weighting='max'"),
    ("algo.advantage=prime | algo.kl_coef=0.01 | algo.kl_in_reward=true", "kl_in_reward"),
]


@pytest.mark.parametrize("override, message", MISTAKES)
def test_every_mistake_fails_at_load_before_any_model(override, message, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the config error")

    monkeypatch.setattr("rlx.build.build_model", no_model)
    assert launch.main([QUICKSTART, *override.split(" | "), "--print-config"]) == 2
    assert message in capsys.readouterr().err


USER_MODULE = '''
    import jax.numpy as jnp

    from rlx.kernels.advantages import group_size, group_sum


    def centered(*, scores_B, group_ids_B, mask_BxL, scale=1.0):
        """Score minus its group's mean, times `scale`, on every response token."""
        mean_B = group_sum(scores_B, group_ids_B) / jnp.maximum(group_size(group_ids_B), 1.0)
        return scale * (scores_B - mean_B)[:, None] * mask_BxL


    def long_answers(prompts, responses, **fields):
        return [min(len(r), 10) / 10 for r in responses]
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_objectives.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_objectives"
    sys.modules.pop("my_objectives", None)


def test_an_estimator_and_a_reward_from_a_user_file_train(user_module, tmp_path):
    overrides = SMALL + [f"run.out_dir={tmp_path}", f"algo.advantage={user_module}:centered",
                         "algo.options={scale: 2.0}", "rewards.workers=1",
                         f"rewards.fns=[{{name: {user_module}:long_answers, weight: 1.0}}]"]
    with pytest.raises(ConfigError, match=r"algo.options \['scal'\] are not options"):
        load_config(None, overrides + ["algo.options={scal: 2.0}"])
    cfg = load_config(None, overrides)
    task = build_task(cfg)
    trainer = RLTrainer(cfg, build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size), task)
    batch, _, _ = trainer.collect(trainer.state, trainer.max_new_tokens())
    lengths = [len(t) for t in map(trainer.tokenizer.decode,
                                   [r[m.astype(bool)].tolist() for r, m in zip(batch.response_ids,
                                                                               batch.response_mask)])]
    assert len(set(lengths)) > 1  # the reward has something to tell apart
    # The estimator as the trainer runs it equals the formula applied by hand.
    adv, _ = trainer.objective.advantages(objectives.AdvantageInputs(
        cfg=cfg, batch=batch, mask_BxL=batch.response_mask, old_logp_BxL=batch.logprobs, ref_logp_BxL=None,
        kl_coef=0.0, prm={}, tokenizer=trainer.tokenizer))
    s = batch.scores.reshape(-1, cfg.algo.n)
    expect = (2.0 * (s - s.mean(1, keepdims=True))).reshape(-1)[:, None] * batch.response_mask
    np.testing.assert_allclose(adv, expect, atol=1e-6)
    m = trainer.step()
    assert 0.0 < m["reward/mean"] <= 1.0 and np.isfinite(m["actor/loss"])
    assert m[f"reward/{user_module}:long_answers"] == pytest.approx(m["reward/mean"])


def test_truncated_sampling_ratios_use_the_full_distribution(tmp_path):
    # One mini-batch, one epoch: the update's policy is the one that sampled, so with old
    # log-probs from the same (full, tempered) distribution the ratio is 1 and approx-KL 0.
    # The sampler's own log-probs under top-k / top-p are larger (a renormalised subset).
    cfg = load_config(None, SMALL + [f"run.out_dir={tmp_path}", "engine.top_k=5", "engine.top_p=0.9",
                                     "engine.temperature=0.8", "trainer.mini_batches=1"])
    task = build_task(cfg)
    trainer = RLTrainer(cfg, build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size), task)
    state = trainer.state
    batch, _, _ = trainer.collect(state, trainer.max_new_tokens())
    _, old_logp, _, _ = trainer.score(state, batch)
    mask = batch.response_mask.astype(bool)
    assert (batch.logprobs[mask] >= old_logp[mask] - 1e-5).all()
    assert (batch.logprobs[mask] - old_logp[mask]).mean() > 1e-3
    m = trainer.step()
    assert abs(m["actor/approx_kl"]) < 1e-5 and m["actor/clip_frac"] == 0.0


def test_the_trainer_runs_its_programs_under_the_actor_mesh(tmp_path, monkeypatch):
    # rlx's logical sharding constraints act only under `jax.set_mesh`; record the mesh each
    # one sees while the trainer's own step traces its programs.
    from rlx.models import transformer

    seen = []
    original = transformer.with_logical_constraint

    def spy(x, names):
        seen.append(jax.sharding.get_abstract_mesh())
        return original(x, names)

    monkeypatch.setattr(transformer, "with_logical_constraint", spy)
    jax.clear_caches()
    cfg = load_config(None, SMALL + [f"run.out_dir={tmp_path}", "trainer.steps=1"])
    task = build_task(cfg)
    trainer = RLTrainer(cfg, build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size), task)
    seen.clear()
    trainer.step()
    # The update's program is traced last in a step; the scoring pass's before it.
    assert seen and seen[-1] == trainer.meshes.actor.abstract_mesh, seen
