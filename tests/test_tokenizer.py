"""Tokenizer interface over sentencepiece and HF tokenizer.json; built-in chat formats.

Run: PYTHONPATH=. pytest -q tests/test_tokenizer.py  (about 10 s, most of it importing transformers)
"""

from __future__ import annotations

import json
import random

import pytest

from rlx.models.chat import apply_chat_template
from rlx.models.tokenizer import Tokenizer, train_sentencepiece


def _lines(n=300, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.randint(0, 999), rng.randint(0, 99), rng.randint(1, 9)
        out.append(f"Evaluate left to right: {a} + {b} * {c}\n{a} + {b} = {a + b}\n"
                   f"{a + b} * {c} = {(a + b) * c}\n\\boxed{{{(a + b) * c}}}")
    return out


SAMPLES = [
    "Evaluate left to right: 12 + 7 * 3\n12 + 7 = 19\n19 * 3 = 57\n\\boxed{57}",
    "  leading spaces,\ttabs and\n\nblank lines  ",
    "unseen characters: é ∑ 日本 🙂 and digits 1234567890",
    "",
]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp_tok(request, tmp_path_factory):
    return train_sentencepiece(_lines(), tmp_path_factory.mktemp(request.param), vocab_size=400,
                               model_type=request.param)


def test_sentencepiece_roundtrip(sp_tok, tmp_path):
    assert sp_tok.kind == "sentencepiece" and sp_tok.vocab_size <= 400
    assert (sp_tok.bos_id, sp_tok.eos_id, sp_tok.pad_id, sp_tok.eos_ids) == (1, 2, 3, (2,))
    for text in SAMPLES:
        ids = sp_tok.encode(text)
        assert sp_tok.decode(ids) == text
        assert sp_tok.encode(text, add_bos=True) == [1] + ids
        assert sp_tok.decode([1] + ids + [2]) == text
        assert sp_tok.decode([1] + ids + [2], skip_special=False) == f"<s>{text}</s>"
    # Digits are single tokens; \boxed{ is one token.
    ids = sp_tok.encode("\\boxed{90210}")
    assert [sp_tok.id_to_piece(i) for i in ids] == ["\\boxed{", "9", "0", "2", "1", "0", "}"]
    assert sp_tok.piece_to_id("\\boxed{") == ids[0] and sp_tok.piece_to_id("no-such-piece") is None
    # save / load gives the same tokenizer.
    again = Tokenizer.load(sp_tok.save(tmp_path / "saved").parent)
    assert all(again.encode(t) == sp_tok.encode(t) for t in SAMPLES)
    assert (again.vocab_size, again.eos_ids, again.pad_id) == (sp_tok.vocab_size, sp_tok.eos_ids, sp_tok.pad_id)


def _hf_bpe(directory, specials=("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")):
    from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers

    tok = HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_lines(), trainer)
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_tokenizer_json_matches_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast

    path = _hf_bpe(tmp_path)
    ours = Tokenizer.load(path)
    ref = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert ours.kind == "hf" and ours.vocab_size == len(ref)
    # Llama 3 style specials found by name; both stop tokens are eos ids.
    assert ours.bos_id == 0 and ours.eos_id == 1 and ours.eos_ids == (1, 2) and ours.pad_id == 1
    for text in SAMPLES:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == ref.decode(ids) == text
        assert ours.encode(text, add_bos=True) == [0] + ids
    with_specials = [0] + ours.encode("1 + 1") + [2]
    assert ours.decode(with_specials, skip_special=False) == ref.decode(with_specials) == \
        "<|begin_of_text|>1 + 1<|eot_id|>"
    assert ours.decode(with_specials) == "1 + 1"
    assert [ours.id_to_piece(i) for i in ours.encode("12")] == ref.convert_ids_to_tokens(ref.encode("12"))


def test_hf_config_files_and_save(tmp_path):
    path = _hf_bpe(tmp_path, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": None, "eos_token": {"content": "<|im_end|>"}, "pad_token": "<|endoftext|>"}))
    tok = Tokenizer.load(tmp_path)  # a directory works too
    assert tok.bos_id is None and tok.eos_id == 2 and tok.pad_id == 0 and tok.eos_ids == (2, 0)
    with pytest.raises(ValueError, match="no BOS token"):
        tok.encode("x", add_bos=True)
    saved = Tokenizer.load(tok.save(tmp_path / "copy").parent)
    assert (saved.bos_id, saved.eos_id, saved.pad_id, saved.eos_ids) == (None, 2, 0, (2, 0))
    assert saved.encode(SAMPLES[0]) == tok.encode(SAMPLES[0])


def test_wordlevel_tokenizer(tmp_path):
    from tokenizers import Tokenizer as HF, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "two": 3, "plus": 4, "is": 5, "four": 6}
    hf = HF(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["<s>", "</s>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert tok.encode("two plus two is four", add_bos=True) == [1, 3, 4, 3, 5, 6]
    assert tok.eos_id == 2 and tok.id_to_piece(6) == "four"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or \\*.model"):
        Tokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope.model")


# Expected strings: the formats rendered by the models' own chat templates, as documented in
# their model cards / tokenizer_config.json (Qwen2.5-*-Instruct; Meta-Llama-3-8B-Instruct;
# Llama-3.1-8B-Instruct with its default date) and in transformers' chat-template docs.
CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"}]


def test_chat_qwen25():
    assert apply_chat_template(CHAT[:1], "qwen2.5") == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    sys_chat = [{"role": "system", "content": "Be brief."}] + CHAT
    assert apply_chat_template(sys_chat, "qwen2.5", add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    assert apply_chat_template(CHAT[:1], "chatml") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_llama3():
    assert apply_chat_template([{"role": "system", "content": "Be brief. "}] + CHAT, "llama3") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert apply_chat_template(CHAT[:1], "llama3.1") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert apply_chat_template([{"role": "system", "content": "Be brief."}] + CHAT[:1], "llama3.1",
                               add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")


def test_chat_errors():
    with pytest.raises(ValueError, match="valid styles"):
        apply_chat_template(CHAT, "vicuna")
    with pytest.raises(ValueError, match="message 0"):
        apply_chat_template([{"role": "robot", "content": "x"}], "qwen2.5")
