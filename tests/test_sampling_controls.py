"""Temperature by entropy and CAMPO in the RL loop: the controller reaches its target, a moving
temperature does not recompile, resume restores the controls, CAMPO shapes the scores and the
length stages set the rollout's maximum length."""

import numpy as np
import pytest

from rlx.build import build_model
from rlx.checkpoint import Checkpointer
from rlx.config import CampoSection, ConfigError, load_config
from rlx.kernels.campo import LengthStage
from rlx.train.shaping import length_at, observe_length, shape_scores
from rlx.train.task import build_task
from rlx.train.trainer import RLTrainer

from test_engine_tiny import compile_log
from test_rl_loop import SMALL, assert_same_state, interrupted


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return build_task(load_config(None, SMALL + [f"run.out_dir={out}"]))


def _trainer(task, overrides, ckpt_dir=None, seed=0):
    cfg = load_config(None, SMALL + overrides)
    model = build_model(cfg.model, seed=seed, vocab_size=task.tokenizer.vocab_size)
    ckpt = Checkpointer(ckpt_dir, keep=2, async_save=False) if ckpt_dir else None
    return RLTrainer(cfg, model, task, checkpointer=ckpt)


def test_controller_converges_to_target_entropy(task):
    # A fixed policy (lr 0): entropy is then a function of T alone, and the controller must
    # find the T that gives the target. The target is half the entropy measured at T = 1.
    probe = _trainer(task, ["optim.lr=0", "trainer.steps=1"])
    h1 = probe.step()["rollout/entropy"]
    target = 0.5 * h1
    trainer = _trainer(task, ["optim.lr=0", "trainer.steps=12", "engine.temperature_control=true",
                              f"engine.target_entropy={target}", "engine.min_temperature=0.05",
                              "engine.temperature_rate=0.5"])
    history = [trainer.step() for _ in range(12)]
    temps = [m["rollout/temperature"] for m in history]
    entropies = [m["rollout/entropy"] for m in history]
    assert temps[0] == 1.0 and temps[1] < 1.0  # too much entropy -> cooler
    for h in entropies[-3:]:
        assert abs(h - target) / target < 0.1, (target, entropies, temps)


def test_moving_temperature_does_not_recompile(task):
    # A target above any reachable entropy: T keeps rising each step (up to max_temperature).
    trainer = _trainer(task, ["engine.temperature_control=true", "engine.target_entropy=20",
                              "engine.max_temperature=50"])
    trainer.step()
    t1 = trainer.state.temperature
    with compile_log() as compiled:
        trainer.step()
        trainer.step()
    assert trainer.state.temperature != t1
    assert not [m for m in compiled if "train_step" in m or "score" in m], compiled


def test_resume_restores_temperature_and_length_stage(task, tmp_path):
    overrides = ["engine.temperature_control=true", "engine.target_entropy=0.5", "campo.max_lengths=[8,16]",
                 "campo.patience=1", "campo.min_growth=10.0", "campo.repetition_penalty=paper"]
    straight = _trainer(task, overrides)
    for _ in range(3):
        straight.step()
    first, resumed = interrupted(lambda ckpt: _trainer(task, overrides, ckpt), tmp_path / "ckpt")
    assert resumed.state.temperature == first.state.temperature != 1.0
    assert resumed.state.length_stage == first.state.length_stage
    resumed.step()
    assert_same_state(straight.state, resumed.state)


def test_length_stages_set_the_rollout_length(task):
    trainer = _trainer(task, ["campo.max_lengths=[4,12]", "campo.boundaries=[2]", "trainer.steps=3"])
    lengths = []
    for _ in range(3):
        m = trainer.step()
        lengths.append(m["rollout/max_new_tokens"])
        assert m["response/length_mean"] <= m["rollout/max_new_tokens"]
    assert lengths == [4.0, 4.0, 12.0]


def test_saturation_schedule_advances_after_patience():
    c, stage = CampoSection(max_lengths=(8, 16, 32), patience=2, min_growth=0.1), LengthStage()
    seen = []
    for mean in (5.0, 6.0, 6.1, 6.2, 9.0, 9.05, 9.1, 9.2):
        seen.append(length_at(c, 8, stage, 0))
        stage = observe_length(c, 8, stage, mean)
    # 5 -> 6 grows; 6.1 and 6.2 do not (< 10%): stage 1 after two flat steps; then 9 grows from
    # the reset best, 9.05 and 9.1 are flat: stage 2, the last; it stays there.
    assert seen == [8, 8, 8, 8, 16, 16, 16, 32]


def test_shape_scores_paper_and_code_forms():
    loop = [5, 6, 7, 8, 1, 2, 1, 2, 1, 2]  # trailing loop "1 2" x 3 from position 4: f = 6/10
    clean = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    ids = np.array([loop, clean, loop], np.int32)
    mask = np.ones_like(ids)
    mask[2, 7:] = 0  # row 2 is "5 6 7 8 1 2 1": a loop "1 2 1"? no -- period 2 twice needs 4 tokens
    truncated = np.array([True, True, False])
    scores = np.array([1.0, 1.0, 1.0], np.float32)
    paper, m = shape_scores(CampoSection(repetition_penalty="paper"), ids, mask, truncated, scores)
    np.testing.assert_allclose(paper, [1.0 - 0.6, 1.0, 1.0])
    assert m["campo/looping"] == pytest.approx(1 / 3)
    code, _ = shape_scores(CampoSection(repetition_penalty="code", code_penalty=0.1), ids, mask, truncated, scores)
    np.testing.assert_allclose(code, [0.9, 1.0, 1.0])
    zeroed, _ = shape_scores(CampoSection(zero_overlength=True), ids, mask, truncated, scores)
    np.testing.assert_allclose(zeroed, [0.0, 0.0, 1.0])


def test_dynamic_sampling_by_correctness_ignores_score_spread(task):
    trainer = _trainer(task, ["algo.dynamic_sampling=true", "algo.dynamic_sampling_metric=correct"])
    sb = trainer.sample(trainer.stream.batch(0), trainer.sampling(), trainer.max_new_tokens(), seed=0)[0]
    n = trainer.cfg.algo.n
    sb.correct[:] = False
    sb.correct[0] = True             # group 0: mixed correctness -> kept
    sb.scores[:] = np.arange(len(sb.scores))  # every group's scores differ -> irrelevant here
    keep = trainer.keep_groups(sb)
    assert keep.tolist() == [True] + [False] * (len(keep) - 1)
    assert len(sb.correct) == len(keep) * n


@pytest.mark.parametrize("override, fragment", [
    ("campo.boundaries=[3]", "campo.max_lengths is empty"),
    ("campo.repetition_penalty=both", "campo.repetition_penalty='both'"),
    ("engine.max_cache_len=40", "longest response"),
])
def test_bad_controls_are_config_errors(override, fragment):
    extra = ["campo.max_lengths=[8,32]"] if override.startswith("engine") else []
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, SMALL + extra + [override])
