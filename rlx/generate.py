"""One path from prompt records to decoded responses, shared by training, held-out evaluation
and the eval job: build the prompt (template, then chat style), encode, roll out through an
`Engine`, decode.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from rlx.data.templates import build_prompt
from rlx.engine import Engine, Rollouts, SamplingConfig, rollout


class VocabDecoder:
    """`decode` that drops ids past the tokenizer's vocabulary.

    A model's embedding is often padded beyond its tokenizer (Qwen2.5: 151,936 rows for
    151,665 tokens), and a random or young model samples those rows; sentencepiece would
    raise on them.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.size = tokenizer, tokenizer.vocab_size

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids if 0 <= int(i) < self.size])


@dataclasses.dataclass(frozen=True)
class Prompter:
    """Question text -> prompt token ids, as `data.template` and `tokenizer.chat_style` say."""

    tokenizer: object
    template: str = "plain"
    chat_style: str = ""

    def text(self, question: str) -> str:
        return build_prompt(question, self.template, self.chat_style)

    def encode(self, text: str) -> list[int]:
        # A Hugging Face tokenizer with a BOS token (Llama) gets it, unless the prompt already opens
        # with its text (a llama3 chat prompt); rlx's own sentencepiece tasks train without one.
        bos = self.tokenizer.bos_id
        if bos is None or getattr(self.tokenizer, "kind", "") == "sentencepiece":
            return self.tokenizer.encode(text)
        return self.tokenizer.encode(text, add_bos=not text.startswith(self.tokenizer.id_to_piece(bos)))

    def records(self, records: Sequence[dict]) -> list[list[int]]:
        return [self.encode(self.text(r["question"])) for r in records]


# The chat style that a chat-rendering template uses, for its end-of-turn markers.
TEMPLATE_STYLES = {"qwen25-math-cot": "chatml", "llama3-chat": "llama3"}


def stop_rules(engine_stop: Sequence[str], chat_style: str, template: str = "") -> tuple[str, ...]:
    """The configured stop strings plus the end-of-turn markers of the prompt's chat format
    (`tokenizer.chat_style`, or the one a chat template renders)."""
    from rlx.models.chat import stop_strings

    style = chat_style or TEMPLATE_STYLES.get(template, "")
    return tuple(engine_stop) + (stop_strings(style) if style else ())


@dataclasses.dataclass(frozen=True)
class Generation:
    rollouts: Rollouts
    texts: list[str]  # decoded responses, one per rollout row


def generate(engine: Engine, tokenizer, prompts: Sequence[Sequence[int]], *, n: int, max_new_tokens: int,
             sampling: SamplingConfig, seed: int, stop: Sequence[str] = ()) -> Generation:
    """n responses per prompt (token ids) under `sampling`, with their decoded texts."""
    decoder = VocabDecoder(tokenizer)
    ro = rollout(None, prompts, n=n, max_new_tokens=max_new_tokens, temperature=sampling.temperature,
                 top_p=sampling.top_p, top_k=sampling.top_k, min_p=sampling.min_p, seed=seed,
                 eos_ids=tuple(tokenizer.eos_ids), stop=stop, tokenizer=decoder if stop else None, engine=engine)
    texts = [decoder.decode(r[:int(m.sum())]) for r, m in zip(ro.response_ids, ro.response_mask)]
    return Generation(ro, texts)
