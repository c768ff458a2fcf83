"""Prompt data: evaluation-set and file loaders, prompt templates."""

from rlx.data.loaders import EVAL_SETS, data_dir, load_eval, load_records, normalize_answer
from rlx.data.templates import BOXED_INSTRUCTION, TEMPLATES, render_prompt

__all__ = ["BOXED_INSTRUCTION", "EVAL_SETS", "TEMPLATES", "data_dir", "load_eval", "load_records",
           "normalize_answer", "render_prompt"]
