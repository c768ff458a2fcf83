"""One tokenizer interface over sentencepiece `.model` files and Hugging Face `tokenizer.json`.

    tok = Tokenizer.load("path/to/dir")      # tokenizer.json or *.model inside, or the file itself
    ids = tok.encode("2 + 2 = \\boxed{4}", add_bos=True)
    tok.decode(ids), tok.eos_ids              # Llama 3 stops on several ids

`train_sentencepiece` builds the tokenizer for the built-in tasks from their own text.

Special ids for a `tokenizer.json` come from `tokenizer_config.json` / `generation_config.json`
beside it when present (as transformers reads them), else from the well-known special tokens
of the Llama 3, Qwen2 and sentencepiece families found in the vocabulary. `eos_ids` is every
end-of-turn / end-of-text token present, because chat models stop on any of them. `pad_id`
falls back to `eos_id` when the tokenizer defines no pad token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>")
EOS_CANDIDATES = ("<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|im_end|>",
                  "</s>", "<eos>", "<|end|>")
PAD_CANDIDATES = ("<pad>", "<|finetune_right_pad_id|>", "<|pad|>")


class Tokenizer:
    """encode / decode plus the special ids a sampler needs; build with `load` or `train_sentencepiece`."""

    def __init__(self, backend, kind: str, *, bos_id: int | None, eos_id: int, pad_id: int,
                 eos_ids: tuple[int, ...], source: str = ""):
        self._backend = backend
        self.kind = kind  # "sentencepiece" or "hf"
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.eos_ids = tuple(dict.fromkeys((eos_id, *eos_ids)))
        self.source = source

    # -- the interface ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        if self.kind == "sentencepiece":
            return self._backend.get_piece_size()
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        if self.kind == "sentencepiece":
            ids = list(self._backend.encode(text))
        else:
            ids = list(self._backend.encode(text, add_special_tokens=False).ids)
        if add_bos:
            if self.bos_id is None:
                raise ValueError(f"{self.source}: this tokenizer has no BOS token; call encode(..., "
                                 "add_bos=False) (Qwen models use none)")
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "hf":
            return self._backend.decode(ids, skip_special_tokens=skip_special)
        sp = self._backend
        if skip_special:
            return sp.decode([i for i in ids if not sp.is_control(i)])
        # sentencepiece renders control pieces (<s>, </s>, <pad>) as nothing: splice them in.
        out, run = [], []
        for i in ids:
            if sp.is_control(i):
                out += [sp.decode(run), sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join(out + [sp.decode(run)])

    def id_to_piece(self, i: int) -> str:
        if self.kind == "sentencepiece":
            return self._backend.id_to_piece(int(i))
        piece = self._backend.id_to_token(int(i))
        if piece is None:
            raise IndexError(f"token id {i} is outside this vocabulary of {self.vocab_size}")
        return piece

    def piece_to_id(self, piece: str) -> int | None:
        if self.kind == "sentencepiece":
            i = self._backend.piece_to_id(piece)
            return None if i == self._backend.unk_id() and piece != self._backend.id_to_piece(i) else i
        return self._backend.token_to_id(piece)

    # -- files -----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """A `.model` file, a `tokenizer.json`, or a directory holding one of them."""
        path = Path(path)
        if path.is_dir():
            found = [path / "tokenizer.json", path / "tokenizer.model", *sorted(path.glob("*.model"))]
            found = [p for p in found if p.is_file()]
            if not found:
                raise FileNotFoundError(f"no tokenizer.json or *.model file in {path}; point "
                                        "tokenizer.path at a tokenizer file or a directory holding one")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist; check tokenizer.path")
        if path.suffix == ".json":
            return _load_hf(path)
        if path.suffix == ".model":
            return _load_sentencepiece(path)
        raise ValueError(f"{path}: unknown tokenizer format; expected a sentencepiece .model or an "
                         "HF tokenizer.json")

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the tokenizer into `directory` so that `Tokenizer.load(directory)` restores it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "sentencepiece":
            out = directory / "tokenizer.model"
            out.write_bytes(self._backend.serialized_model_proto())
            return out
        out = directory / "tokenizer.json"
        self._backend.save(str(out))
        config = {"bos_token": self._piece_or_none(self.bos_id), "eos_token": self.id_to_piece(self.eos_id),
                  "pad_token": self.id_to_piece(self.pad_id)}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": list(self.eos_ids)}))
        return out

    def _piece_or_none(self, i: int | None) -> str | None:
        return None if i is None else self.id_to_piece(i)

    def __repr__(self) -> str:
        return (f"Tokenizer({self.kind}, vocab_size={self.vocab_size}, bos={self.bos_id}, "
                f"eos={self.eos_ids}, pad={self.pad_id}, source={self.source!r})")


def _load_sentencepiece(path: Path) -> Tokenizer:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    bos = sp.bos_id() if sp.bos_id() >= 0 else None
    if sp.eos_id() < 0:
        raise ValueError(f"{path}: the sentencepiece model has no EOS piece; retrain it with eos_id >= 0")
    pad = sp.pad_id() if sp.pad_id() >= 0 else sp.eos_id()
    return Tokenizer(sp, "sentencepiece", bos_id=bos, eos_id=sp.eos_id(), pad_id=pad,
                     eos_ids=(sp.eos_id(),), source=str(path))


def _token_name(value) -> str | None:
    if isinstance(value, dict):  # transformers writes AddedToken as {"content": ..., ...}
        return value.get("content")
    return value if isinstance(value, str) else None


def _load_hf(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_file(str(path))
    config_file, gen_file = path.parent / "tokenizer_config.json", path.parent / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}

    def named(key):
        name = _token_name(config.get(key))
        return tok.token_to_id(name) if name is not None else None

    def first(candidates):
        return next((tok.token_to_id(c) for c in candidates if tok.token_to_id(c) is not None), None)

    known_eos = [tok.token_to_id(c) for c in EOS_CANDIDATES if tok.token_to_id(c) is not None]
    gen_eos = gen.get("eos_token_id")
    gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
    eos = named("eos_token")
    eos = eos if eos is not None else (gen_eos[0] if gen_eos else first(EOS_CANDIDATES))
    if eos is None:
        raise ValueError(f"{path}: cannot tell the EOS token; add tokenizer_config.json with "
                         f"\"eos_token\" beside it (none of {EOS_CANDIDATES} is in the vocabulary)")
    # transformers leaves bos_token null for Qwen; only guess when there is no config at all.
    bos = named("bos_token") if config else first(BOS_CANDIDATES)
    pad = named("pad_token")
    pad = pad if pad is not None else first(PAD_CANDIDATES)
    return Tokenizer(tok, "hf", bos_id=bos, eos_id=eos, pad_id=eos if pad is None else pad,
                     eos_ids=tuple(gen_eos + known_eos), source=str(path))


def train_sentencepiece(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int,
                        model_type: str = "bpe", user_defined_symbols: Sequence[str] = ("\\boxed{",),
                        ) -> Tokenizer:
    """Train a sentencepiece model on `texts`; writes `out_dir/tokenizer.model` and loads it.

    Digits are always split into single tokens (arithmetic stays learnable), text is kept as is
    (identity normalisation, whitespace and newlines preserved), unknown characters fall back to
    bytes, and `user_defined_symbols` (by default `\\boxed{`) are single tokens. ids: <unk>=0,
    <s>=1, </s>=2, <pad>=3. `vocab_size` is an upper bound: a small corpus may yield fewer pieces.
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size, model_type=model_type, split_digits=True, byte_fallback=True,
        user_defined_symbols=list(user_defined_symbols), character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, hard_vocab_limit=False,
        max_sentence_length=1 << 16, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        minloglevel=2, num_threads=min(4, os.cpu_count() or 1))
    return Tokenizer.load(out_dir / "tokenizer.model")
