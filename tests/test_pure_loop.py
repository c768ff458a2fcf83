"""PURE in the RL loop: step splitting, step scores from the implicit PRM, and the first
step's advantages against the float64 reference."""

import dataclasses

import numpy as np
import pytest

import reference_numpy as ref
from rlx.build import build_model
from rlx.config import ConfigError, load_config
from rlx.train import pure
from rlx.train.objectives import AdvantageInputs
from rlx.train.prm import ImplicitPRM
from rlx.train.pure import split_steps, step_ends, step_scores
from rlx.train.task import build_task
from rlx.train.trainer import RLTrainer

from test_rl_loop import SMALL

PURE = ["algo.advantage=pure", "prime.prm_lr=1e-3", 'pure.separators=["\\n"]', "pure.max_steps=8"]


def test_split_steps_at_separators_and_end():
    toks = ["1", " +", " 2", "\n", "= 3", "\n\n", "x"]
    assert split_steps(toks, ("\n",), 8) == [3, 5, 6]
    assert split_steps(toks, ("\n\n",), 8) == [5, 6]
    assert split_steps(["a", "b"], ("\n",), 8) == [1]
    assert split_steps(["a\n", "b\n"], ("\n",), 8) == [0, 1]  # a separator on the last token ends once
    assert split_steps(toks, ("\n",), 2) == [3, 6]  # past max_steps the rest is one step
    assert split_steps(["\n", "\n"], ("\n\n",), 8) == [1]  # a separator spanning two tokens
    assert split_steps([], ("\n",), 8) == []


def test_step_scores_prefix_and_step():
    q = np.array([[1.0, 2.0, -4.0, 0.5, 0.0]])
    ends = np.array([[1, 3, -1]])
    beta = 0.5
    prefix = step_scores(q, ends, beta=beta, kind="prefix")
    # Q at the ends: 3.0 and -0.5; PR = 2 sigmoid(beta Q) - 1
    expect = [2 / (1 + np.exp(-beta * 3.0)) - 1, 2 / (1 + np.exp(beta * 0.5)) - 1, 0.0]
    np.testing.assert_allclose(prefix[0], expect, rtol=1e-12)
    step = step_scores(q, ends, beta=beta, kind="step")
    expect = [2 / (1 + np.exp(-beta * 3.0)) - 1, 2 / (1 + np.exp(beta * 3.5)) - 1, 0.0]
    np.testing.assert_allclose(step[0], expect, rtol=1e-12)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, SMALL + PURE + [f"run.out_dir={out}"])
    return cfg, build_task(cfg)


def test_step_ends_on_real_tokens(setup):
    _, task = setup
    tok = task.tokenizer
    ids = tok.encode("12 + 3\n= 15\n= 15")
    row = np.array([ids + [0, 0]])
    mask = np.array([[1] * len(ids) + [0, 0]])
    ends = step_ends(tok, row, mask, ("\n",), 8)[0]
    got = [e for e in ends if e >= 0]
    assert len(got) == 3 and got[-1] == len(ids) - 1
    pieces = [tok.decode([t]) for t in ids]
    for e in got[:-1]:
        assert "".join(pieces[:e + 1]).endswith("\n")


def test_first_step_advantages_are_the_verifiable_rewards(setup):
    # At the first step the PRM equals its reference, so with update=after every q_t = 0, every
    # step score and step reward is 0, and PURE's advantage is the whitened, RLOO-centred VR.
    cfg, task = setup
    model = build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size)
    trainer = RLTrainer(cfg, model, task)
    assert trainer.objective is pure.PURE and isinstance(trainer.prm, ImplicitPRM)
    sb, _, _ = trainer.collect(trainer.state, trainer.max_new_tokens())
    mask = sb.response_mask.astype(np.float32)
    sb.correct[: len(sb.correct) // 3] = True  # make VR vary within groups
    _, prm_out, _ = trainer.prm.step(trainer.state.prm, sb, sb.response_mask, sb.logprobs)
    adv, metrics = trainer.objective.advantages(AdvantageInputs(
        cfg=cfg, batch=sb, mask_BxL=sb.response_mask, old_logp_BxL=sb.logprobs, ref_logp_BxL=None, kl_coef=0.0,
        prm=prm_out, tokenizer=trainer.tokenizer))
    assert abs(metrics["pure/process_reward_mean"]) < 1e-6  # 0 up to fusion order
    vr = sb.correct.astype(np.float64) - 1.0
    # Step rewards 0 on every step end; those tokens get advantage 0 (pure.zero_step_ends).
    ends = pure.step_ends(trainer.tokenizer, sb.response_ids, mask, cfg.pure.separators, cfg.pure.max_steps)
    positions = [[int(e) for e in row if e >= 0] for row in ends]
    expect, _ = ref.pure_advantages([[0.0] * len(p) for p in positions], positions, vr, mask, sb.group_ids,
                                    zero_step_ends=cfg.pure.zero_step_ends)
    np.testing.assert_allclose(adv, expect, atol=1e-5)
    assert np.abs(adv).sum() > 0


def test_pure_trains_two_steps_with_gold_answers_for_some_prompts(setup):
    # PURE's headline setting: verifiable rewards on a fraction of the problems only.
    cfg, task = setup
    task = dataclasses.replace(task, train=[r if i % 2 else {k: v for k, v in r.items() if k != "answer"}
                                            for i, r in enumerate(task.train)])
    model = build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size)
    trainer = RLTrainer(cfg, model, task)
    history = [trainer.step() for _ in range(2)]
    for m in history:
        for key in ("pure/steps_mean", "pure/min_step_score_mean", "prm/loss", "actor/loss"):
            assert np.isfinite(m[key]), key
        assert m["pure/steps_mean"] >= 1.0
    labelled = [m["pure/labelled_fraction"] for m in history]  # 4 prompts a step, half labelled
    assert 0.0 < np.mean(labelled) < 1.0, labelled


def test_classifier_prm_scores_each_step(setup, tmp_path):
    pytest.importorskip("transformers")
    from test_models_prm import _save_prm

    cfg, task = setup
    # Logits (neg, pos) = (-1, 1) everywhere: every step scores PR = 2 sigmoid(2) - 1 = tanh(1).
    _save_prm(tmp_path / "prm", vocab=task.tokenizer.vocab_size, bias=(-1.0, 1.0))
    cfg = load_config(None, SMALL + PURE + [f"run.out_dir={tmp_path}", "pure.prm=classifier",
                                            f"pure.prm_path={tmp_path / 'prm'}"])
    model = build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size)
    trainer = RLTrainer(cfg, model, task)
    m = trainer.step()
    assert m["pure/step_score_mean"] == pytest.approx(np.tanh(1.0), rel=1e-5)
    assert m["pure/min_step_score_mean"] == pytest.approx(np.tanh(1.0), rel=1e-5)
    # Softmin over equal scores is uniform, so a response's step rewards sum to its score.
    assert m["pure/process_reward_mean"] == pytest.approx(np.tanh(1.0), rel=1e-5)
    assert np.isfinite(m["actor/loss"])


def test_classifier_prm_needs_a_path():
    with pytest.raises(ConfigError, match="pure.prm_path"):
        load_config(None, SMALL + PURE + ["pure.prm=classifier"])


def _torch_step_logits(backbone, head, ids, reads):
    import torch

    with torch.no_grad():
        h = backbone(input_ids=torch.tensor([ids])).last_hidden_state
        return head(h)[0, reads].numpy()


def _classifier_trainer(setup, tmp_path, extra=(), vocab=None, tokenizer_dir=None):
    from test_models_prm import _save_prm

    cfg, task = setup
    backbone, head = _save_prm(tmp_path / "prm", vocab=vocab or task.tokenizer.vocab_size)
    if tokenizer_dir is not None:
        for f in tokenizer_dir.iterdir():
            (tmp_path / "prm" / f.name).write_bytes(f.read_bytes())
    cfg = load_config(None, SMALL + PURE + [f"run.out_dir={tmp_path}", "pure.prm=classifier",
                                            f"pure.prm_path={tmp_path / 'prm'}", *extra])
    trainer = RLTrainer(cfg, build_model(cfg.model, seed=0, vocab_size=task.tokenizer.vocab_size), task)
    return trainer, backbone, head


def test_classifier_prm_reads_pures_format(setup, tmp_path):
    # PURE's PRM: the actor's prompt, then the response with each step's last token replaced by
    # "\n"; read there. Checked row by row against the PyTorch PRM on that sequence.
    pytest.importorskip("transformers")
    trainer, backbone, head = _classifier_trainer(setup, tmp_path)
    tok = trainer.tokenizer
    newline = tok.encode("\n")
    assert len(newline) == 1
    sb, _, _ = trainer.collect(trainer.state, trainer.max_new_tokens())
    _, out, _ = trainer.prm.step(trainer.state.prm, sb, sb.response_mask, sb.logprobs)
    checked = 0
    for b in range(0, len(sb.records), 3):
        ends = [int(e) for e in out["ends"][b] if e >= 0]
        if not ends:
            continue
        prompt = sb.prompt_ids[b][sb.prompt_mask[b] > 0].tolist()
        response = sb.response_ids[b][sb.response_mask[b] > 0].tolist()
        for e in ends:
            response[e] = newline[0]
        want = _torch_step_logits(backbone, head, prompt + response, [len(prompt) + e for e in ends])
        np.testing.assert_allclose(out["step_logits"][b, :len(ends)], want, atol=2e-4)
        checked += 1
    assert checked >= 2


def _chat_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Please reason step by step, and put your final answer within \\boxed{}.",
              "system user assistant 12 + 34 = 46 what is 7 * 8 ?"] * 4
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return tok


def test_classifier_prm_reads_qwen_prm_card_format(setup, tmp_path):
    # Qwen2.5-Math-PRM's card: system prompt, the problem, the steps' stripped texts each ended by
    # "<extra_0>", in the PRM's own tokenizer; read at every "<extra_0>".
    pytest.importorskip("transformers")
    from rlx.train.prm_format import QWEN_PRM_SYSTEM, prm_inputs, step_texts

    hf = _chat_tokenizer(tmp_path / "tok")
    trainer, backbone, head = _classifier_trainer(setup, tmp_path, ["pure.prm_format=qwen_prm"],
                                                  vocab=hf.get_vocab_size(), tokenizer_dir=tmp_path / "tok")
    sb, _, _ = trainer.collect(trainer.state, trainer.max_new_tokens())
    _, out, _ = trainer.prm.step(trainer.state.prm, sb, sb.response_mask, sb.logprobs)
    sep = hf.token_to_id("<extra_0>")
    cfg_n = len(sb.response_ids) // len(sb.records)
    checked = 0
    for b in range(0, len(sb.records), 3):
        ends = out["ends"][b]
        k = int((ends >= 0).sum())
        if not k:
            continue
        steps = step_texts(trainer.tokenizer, sb.response_ids[b], ends)
        assert len(steps) == k and all(s == s.strip() for s in steps)
        text = (f"<|im_start|>system\n{QWEN_PRM_SYSTEM}<|im_end|>\n<|im_start|>user\n{sb.records[b // cfg_n]['question']}"
                f"<|im_end|>\n<|im_start|>assistant\n" + "".join(s + "<extra_0>" for s in steps) + "<|im_end|>\n")
        ids = hf.encode(text, add_special_tokens=False).ids
        reads = [i for i, t in enumerate(ids) if t == sep]
        assert len(reads) == k
        np.testing.assert_allclose(out["step_logits"][b, :k], _torch_step_logits(backbone, head, ids, reads),
                                   atol=2e-4)
        checked += 1
    assert checked >= 2
    x = prm_inputs("qwen_prm", sb, out["ends"], actor_tokenizer=trainer.tokenizer,
                   prm_tokenizer=trainer.prm.prm_tokenizer)
    assert x.ids_BxT.shape[1] % 64 == 0  # bucketed widths: few compiled shapes
    assert np.isfinite(trainer.step()["actor/loss"])


def test_classifier_prm_separator_must_be_one_token(setup, tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(ConfigError, match="pure.prm_separator"):
        _classifier_trainer(setup, tmp_path, ["pure.prm_separator=two words"])
