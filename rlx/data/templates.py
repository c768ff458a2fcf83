"""Prompt templates: how a question becomes the text the model continues.

    qwen25-math-cot  Qwen2.5-Math's CoT prompt (its evaluation's "qwen25-math-cot"): ChatML with
                     the system message "Please reason step by step, and put your final answer
                     within \\boxed{}." and the question as the user turn
    llama3-chat      Llama 3 chat format; the user turn is the question, a newline and the
                     same instruction (as SimpleRL-Zoo prompts Llama models)
    plain            no chat markup: the question and a newline (what the built-in tasks'
                     tokenizer and demonstrations are written in); `instruction` adds a line
    boxed            no chat markup: the question, a newline and the step-by-step / \\boxed{}
                     instruction (Qwen2.5-Math's "mathstral" prompt, for base models)
"""

from __future__ import annotations

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TEMPLATES = ("qwen25-math-cot", "llama3-chat", "plain", "boxed")


def render_prompt(question: str, template: str, *, instruction: str = "") -> str:
    """The prompt text for `question` under a named template (see the module docstring)."""
    # Imported here: rlx.models pulls in JAX, which loading data should not need.
    from rlx.models.chat import apply_chat_template

    if template == "qwen25-math-cot":
        return apply_chat_template([{"role": "system", "content": BOXED_INSTRUCTION},
                                    {"role": "user", "content": question}], "chatml")
    if template == "llama3-chat":
        return apply_chat_template([{"role": "user", "content": f"{question}\n{BOXED_INSTRUCTION}"}], "llama3")
    if template == "plain":
        return f"{question}\n{instruction}\n" if instruction else f"{question}\n"
    if template == "boxed":
        return f"{question}\n{BOXED_INSTRUCTION}"
    raise ValueError(f"unknown prompt template {template!r}; valid templates: {list(TEMPLATES)}")


# Templates that already render a chat format; `tokenizer.chat_style` would wrap them twice.
CHAT_TEMPLATES = ("qwen25-math-cot", "llama3-chat")


def build_prompt(question: str, template: str, chat_style: str = "") -> str:
    """`data.template` applied to the question, then wrapped as a user turn in `chat_style`."""
    from rlx.models.chat import STYLES, apply_chat_template
    from rlx.typed_tree import ConfigError

    if template not in TEMPLATES:
        raise ConfigError(f"data.template='{template}' is not a prompt template; choose one of "
                          f"{', '.join(TEMPLATES)}")
    text = render_prompt(question, template)
    if not chat_style:
        return text
    if chat_style not in STYLES:
        raise ConfigError(f"tokenizer.chat_style='{chat_style}' is not a chat style; choose one of "
                          f"{', '.join(sorted(STYLES))} or leave it empty")
    if template in CHAT_TEMPLATES:
        raise ConfigError(f"data.template='{template}' already renders a chat prompt; leave "
                          f"tokenizer.chat_style empty or use data.template=plain or boxed")
    return apply_chat_template([{"role": "user", "content": text.strip()}], chat_style)
