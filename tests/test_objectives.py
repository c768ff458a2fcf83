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


def test_training_sft_and_eval_prompts_share_the_chat_style(tmp_path):
    from rlx.evaluate import build_prompt
    from rlx.train.sft import examples_from_task

    cfg = load_config(None, SMALL + [f"run.out_dir={tmp_path}", "tokenizer.chat_style=chatml",
                                     "engine.max_prefill_length=128", "engine.max_cache_len=160"])
    task = build_task(cfg)
    record, demo = task.demos[0]
    want = build_prompt(record["question"], "plain", "chatml")  # what the eval job sends
    assert want.startswith("<|im_start|>user\n") and task.prompter.text(record["question"]) == want
    assert task.prompter.records([record])[0] == task.tokenizer.encode(want)
    assert list(examples_from_task(task)[0].prompt_ids) == task.tokenizer.encode(want)
    trainer = RLTrainer(cfg, build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size), task)
    assert "<|im_end|>" in trainer.stop  # the chat turn's end stops a rollout


@pytest.mark.parametrize("name, expect", [("psr", -1.0), ("nsr", 1.0)])
def test_psr_and_nsr_train_on_their_samples_only(name, expect):
    # RLVR-Decomposed: 1 correct + 3 wrong samples of 10 tokens. At ratio 1 the PSR loss is
    # -A = -1 on the correct sample's tokens alone (-0.25 if the wrong ones kept A = 0 and
    # stayed in the token-mean); NSR's is +1 on the three wrong ones.
    from rlx.kernels.aggregation import aggregate
    from rlx.kernels.policy_loss import ppo_clip_loss
    from rlx.train.batch import StepBatch

    scores = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    mask = np.ones((4, 10), np.int32)
    batch = StepBatch([{}], np.zeros((4, 1), np.int32), np.ones((4, 1), np.int32), np.zeros((4, 10), np.int32),
                      mask, np.zeros((4, 10), np.float32), np.zeros(4, np.int32), scores, scores,
                      np.zeros(4, bool))
    cfg = load_config(None, SMALL + [f"algo.advantage={name}"])
    objective = objectives.get_objective(name)
    x = objectives.AdvantageInputs(cfg=cfg, batch=batch, mask_BxL=mask, old_logp_BxL=batch.logprobs,
                                   ref_logp_BxL=None, kl_coef=0.0, prm={}, tokenizer=None)
    adv, _ = objective.advantages(x)
    loss_mask = mask * objective.loss_rows(x)[:, None]
    loss = ppo_clip_loss(batch.logprobs, batch.logprobs, adv).loss_BxL
    assert float(aggregate("token-mean", loss, loss_mask)) == pytest.approx(expect)
    assert objectives.get_objective("grpo").loss_rows is None


def test_truncated_rows_keep_their_length_when_masked_out_of_the_loss(tmp_path):
    # 4 new tokens: the untrained model almost never stops, so nearly every row is truncated;
    # with DAPO's overlong buffer of 2 each truncated row (4 tokens) gets the full -1.
    cfg = load_config(None, SMALL + [f"run.out_dir={tmp_path}", "algo.mask_truncated=true", "engine.max_new_tokens=4",
                                     "algo.overlong_buffer=2"])
    task = build_task(cfg)
    trainer = RLTrainer(cfg, build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size), task)
    m = trainer.step()
    assert m["response/truncated_fraction"] > 0.5
    assert m["response/length_mean"] >= 4 * m["response/truncated_fraction"]
    assert m["reward/overlong_penalty"] <= -m["response/truncated_fraction"]


def test_scoring_a_micro_batch_at_a_time_equals_scoring_the_step_at_once(tmp_path):
    # Long-context steps score trainer.micro_batch_size rows per program, as the update does.
    common = SMALL + [f"run.out_dir={tmp_path}", "algo.kl_coef=0.01", "algo.recompute_old_logprobs=true"]
    whole = load_config(None, common)
    task = build_task(whole)
    model = build_model(whole.model, seed=0, vocab_size=task.tokenizer.vocab_size)
    a = RLTrainer(whole, model, task)
    b = RLTrainer(load_config(None, common + ["trainer.micro_batch_size=4"]), model, task)
    assert (a.score_rows, b.score_rows) == (16, 4)
    batch, _, _ = a.collect(a.state, a.max_new_tokens())
    _, old_a, ref_a, ent_a = a.score(a.state, batch)
    _, old_b, ref_b, ent_b = b.score(b.state, batch)
    np.testing.assert_allclose(old_b, old_a, atol=1e-6)
    np.testing.assert_allclose(ref_b, ref_a, atol=1e-6)
    assert ent_b == pytest.approx(ent_a, abs=1e-6)
