"""EMPO: the semantic-entropy reward on hand-made groups, and a label-free loop."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.build import build_model
from rlx.config import ConfigError, load_config
from rlx.data.loaders import load_records
from rlx.kernels import ADVANTAGE_FNS
from rlx.kernels.empo import cluster_answers, empo_rewards, entropy_from_rewards
from rlx.rewards import empo
from rlx.rewards.math import equivalent
from rlx.train.rewards import RewardScorer
from rlx.train.task import build_task
from rlx.train.trainer import RLTrainer
from tests.test_rl_loop import SMALL

# One group of G = 7: answers 3 (x3, one written "3.0"), 5 (x2), none, 7.
GROUP = ["so \\boxed{3}", "\\boxed{3}", "x = \\boxed{3.0}", "\\boxed{5}", "no answer here", "\\boxed{7}",
         "\\boxed{5}"]


def _formula(answers, same):
    """p_c(i) if H < log G and the answer is non-empty, else 0 -- computed from H itself."""
    g = len(answers)
    ids = cluster_answers(answers, same)
    p = [ids.count(c) / g for c in ids]
    h = -sum(ids.count(c) / g * math.log(ids.count(c) / g) for c in set(ids))
    return [pi if h < math.log(g) - 1e-12 and a else 0.0 for pi, a in zip(p, answers)]


def test_reward_of_a_hand_made_group_matches_the_formula():
    rewards = empo.empo_fn([""] * 7, GROUP, group=[0] * 7)
    np.testing.assert_allclose(rewards, [3 / 7, 3 / 7, 3 / 7, 2 / 7, 0, 1 / 7, 2 / 7])
    answers = [empo.extract(r) for r in GROUP]
    np.testing.assert_allclose(rewards, _formula(answers, lambda a, b: equivalent(a, b)))
    # The reference code's exact string match keeps "3.0" apart from "3".
    exact = empo.empo_fn([""] * 7, GROUP, group=[0] * 7, equivalence="exact")
    np.testing.assert_allclose(exact, [2 / 7, 2 / 7, 1 / 7, 2 / 7, 0, 1 / 7, 2 / 7])
    # The jitted kernel agrees on cluster ids from the same greedy clustering.
    ids = cluster_answers(answers, str.__eq__)
    k, _ = empo_rewards(jnp.asarray(ids), jnp.zeros(7, jnp.int32), jnp.asarray([a == "" for a in answers]))
    np.testing.assert_allclose(np.asarray(k), exact, rtol=1e-6)


def test_all_different_or_empty_answers_earn_nothing_and_groups_stay_apart():
    distinct = ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "none"]
    same = ["\\boxed{4}", "\\boxed{4}", "\\boxed{4}", "\\boxed{4}"]
    rewards = empo.empo_fn([""] * 8, distinct + same, group=[0] * 4 + [1] * 4)
    assert rewards == [0.0] * 4 + [1.0] * 4
    assert empo.empo_fn([""] * 3, ["a", "b", "c"], group=[0, 0, 0]) == [0.0] * 3


def test_advantage_is_the_group_zscore_with_eps_1e4():
    r = np.array([3, 3, 3, 2, 0, 1, 2], np.float32) / 7
    mask = np.ones((7, 3), np.float32)
    adv, _ = ADVANTAGE_FNS["empo"](mask_BxL=mask, group_ids_B=np.zeros(7, np.int32), scores_B=r)
    want = (r - r.mean()) / (r.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(np.asarray(adv)[:, 0], want, rtol=1e-5)


def test_scorer_passes_groups_and_reports_nan_accuracy_without_gold():
    section = load_config(None, ["rewards.fns=[{name: empo}]", "rewards.workers=0"]).rewards
    scorer = RewardScorer(section)
    rows = [{"question": "q"}] * 2 + [{"question": "r", "answer": "4"}] * 2
    scores, correct, _, per_fn = scorer(rows, ["\\boxed{1}", "\\boxed{1}", "\\boxed{4}", "\\boxed{5}"],
                                        group_ids=[0, 0, 1, 1])
    np.testing.assert_allclose(per_fn["empo"], scores)  # one reward at weight 1
    np.testing.assert_allclose(scores, [1.0, 1.0, 0.0, 0.0])
    assert np.isnan(correct[:2]).all() and list(correct[2:]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="module:function"):
        RewardScorer(load_config(None, ["rewards.fns=[{name: empo}]", "rewards.empo.equivalence=nope"]).rewards)


def test_records_without_answers_load(tmp_path):
    path = tmp_path / "unlabelled.jsonl"
    path.write_text("\n".join(json.dumps({"problem": f"{i} + 1"}) for i in range(3)))
    records = load_records(path, question_field="problem", answer_field="")
    assert [r["answer"] for r in records] == [None] * 3 and records[1]["question"] == "1 + 1"


def test_empo_loop_trains_two_steps_on_prompts_without_answers(tmp_path):
    cfg = load_config(None, SMALL + [f"run.out_dir={tmp_path}", "algo.advantage=empo", "algo.n=4",
                                     "algo.loss_agg=seq-mean-token-mean", "rewards.fns=[{name: empo}]",
                                     "rewards.boxed_required=false", "trainer.steps=2"])
    task = build_task(cfg)
    task.train = [{k: v for k, v in r.items() if k != "answer"} for r in task.train]
    model = build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size)
    trainer = RLTrainer(cfg, model, task)
    start = [np.asarray(x) for x in jax.tree.leaves(trainer.state.params)]
    for _ in range(2):
        metrics = trainer.step()
        assert np.isnan(metrics["reward/accuracy"]) and np.isfinite(metrics["actor/loss"])
        assert 0.0 <= metrics["reward/empo"] <= 1.0
    assert trainer.state.step == 2
    end = [np.asarray(x) for x in jax.tree.leaves(trainer.state.params)]
    # The untrained model's "last numbers" agree often enough to give a learning signal.
    assert any(not np.array_equal(a, b) for a, b in zip(start, end))


def test_entropy_band_keeps_only_groups_inside_it(tmp_path):
    cfg = load_config(None, SMALL + [f"run.out_dir={tmp_path}", "algo.advantage=empo", "algo.n=4",
                                     "rewards.fns=[{name: empo}]", "rewards.boxed_required=false",
                                     "rewards.empo.entropy_band=[0.5, 1.2]"])
    task = build_task(cfg)
    model = build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size)
    trainer = RLTrainer(cfg, model, task)
    assert trainer.rounds() == 1 + cfg.algo.max_oversample_rounds
    sb, metrics = trainer.sample(trainer.stream.batch(0), trainer.sampling(), trainer.max_new_tokens(), seed=0)
    entropy = np.asarray(entropy_from_rewards(sb.per_fn["empo"], sb.group_ids))
    # The entropy comes back from the rewards alone: check it against the clusters' definition.
    texts = [trainer.tokenizer.decode(r[m.astype(bool)].tolist()) for r, m in zip(sb.response_ids, sb.response_mask)]
    for grp in range(4):
        answers = [empo.extract(t, boxed_required=False) for t in texts[4 * grp:4 * grp + 4]]
        ids = empo.cluster(answers, lambda a, b: equivalent(a, b))
        h = -sum(ids.count(c) / 4 * math.log(ids.count(c) / 4) for c in set(ids))
        assert entropy[4 * grp] == pytest.approx(h, abs=1e-5)
    assert metrics["empo/semantic_entropy"] == pytest.approx(float(entropy.mean()))
    # Rewards whose clusters give entropies 0, log 4 - 3/4 log 3 (~0.56), log 2 (~0.69), log 4:
    # (1111), (3/4 x3, 1/4), (1/2 x4), (1/4 x4).
    sb.per_fn["empo"] = np.array([1, 1, 1, 1, .75, .75, .75, .25, .5, .5, .5, .5, .25, .25, .25, .25], np.float32)
    assert trainer.keep_groups(sb).tolist() == [False, True, True, False]
    m = trainer.step()
    assert 0.0 <= m["filter/kept_fraction"] <= 1.0 and np.isfinite(m["actor/loss"])


def test_entropy_band_needs_the_empo_reward():
    with pytest.raises(ConfigError, match="entropy_band"):
        load_config(None, SMALL + ["rewards.empo.entropy_band=[0.5, 1.2]"])
    with pytest.raises(ConfigError, match="entropy_band"):
        load_config(None, SMALL + ["rewards.fns=[{name: empo}]", "rewards.empo.entropy_band=[1.0]"])
