"""Chat formats built in, so that prompts never depend on a jinja template fetched from a hub.

Each style reproduces the string that the model's own Hugging Face chat template renders
(`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`):

    qwen2.5   ChatML; with no system message first, Qwen2.5's default system prompt is added
    chatml    ChatML with no default system prompt (Qwen2.5-Math's CoT prompt supplies its own)
    llama3    Llama 3: <|begin_of_text|> then <|start_header_id|>role<|end_header_id|>\\n\\n
              content (stripped) <|eot_id|> per message
    llama3.1  Llama 3.1/3.2/3.3: as llama3, but the template always opens with a system block
              carrying "Cutting Knowledge Date" and "Today Date" (its default date, 26 Jul 2024)
"""

from __future__ import annotations

import functools

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LLAMA31_DATE = "26 Jul 2024"
ROLES = ("system", "user", "assistant")


def _check(messages: list[dict]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")


def _chatml(messages, add_generation_prompt, default_system):
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}, *messages]
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _llama3_turn(role: str, content: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"


def _llama3(messages, add_generation_prompt, dated_system):
    out = "<|begin_of_text|>"
    if dated_system:
        system = ""
        if messages and messages[0]["role"] == "system":
            system, messages = messages[0]["content"].strip(), messages[1:]
        out += _llama3_turn("system", f"Cutting Knowledge Date: December 2023\nToday Date: "
                                      f"{LLAMA31_DATE}\n\n{system}")
    out += "".join(_llama3_turn(m["role"], m["content"].strip()) for m in messages)
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


STYLES = {
    "qwen2.5": functools.partial(_chatml, default_system=QWEN_DEFAULT_SYSTEM),
    "chatml": functools.partial(_chatml, default_system=None),
    "llama3": functools.partial(_llama3, dated_system=False),
    "llama3.1": functools.partial(_llama3, dated_system=True),
}


def apply_chat_template(messages: list[dict], style: str, add_generation_prompt: bool = True) -> str:
    """Render `messages` ([{"role", "content"}, ...]) in a model family's chat format."""
    if style not in STYLES:
        raise ValueError(f"unknown chat style {style!r}; valid styles: {sorted(STYLES)}")
    _check(messages)
    return STYLES[style](list(messages), add_generation_prompt)


def stop_strings(style: str) -> tuple[str, ...]:
    """End-of-turn markers of a style, for trimming decoded text."""
    if style not in STYLES:
        raise ValueError(f"unknown chat style {style!r}; valid styles: {sorted(STYLES)}")
    return ("<|im_end|>", "<|endoftext|>") if style in ("qwen2.5", "chatml") else ("<|eot_id|>", "<|end_of_text|>")
