"""Run directory, tensorboardX scalars and the console progress display.

Only process 0 writes: other processes get a writer whose methods do nothing, so callers never
branch on the process index.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import jax


def is_chief() -> bool:
    return jax.process_index() == 0


def prepare_run_dir(run_dir: Path, config_yaml: str) -> Path:
    """Create `run_dir` and write the resolved config there (process 0 only)."""
    run_dir = Path(run_dir)
    if is_chief():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml)
    return run_dir


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write: a crash never leaves a half-written summary."""
    if not is_chief():
        return
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


class MetricsWriter:
    """Scalars to tensorboardX event files and to `metrics.jsonl` in the run directory."""

    def __init__(self, run_dir: Path):
        self._tb = None
        self._jsonl = None
        if is_chief():
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(Path(run_dir) / "tb"))
            self._jsonl = open(Path(run_dir) / "metrics.jsonl", "a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._tb is None:
            return
        clean = {k: float(v) for k, v in scalars.items() if v is not None}
        for key, value in clean.items():
            if math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._jsonl.close()
            self._tb = None


class Progress:
    """One updating line: step, reward, accuracy, tokens/s, ETA -- not a log flood."""

    KEYS = (("reward", "reward/mean", "{:.3f}"), ("acc", "reward/accuracy", "{:.1%}"),
            ("len", "response/length_mean", "{:.0f}"), ("tok/s", "perf/tokens_per_s", "{:.0f}"))

    def __init__(self, total: int, desc: str, initial: int = 0):
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=initial, desc=desc, disable=not is_chief(),
                         dynamic_ncols=True, file=sys.stdout, leave=True,
                         bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {postfix} [{elapsed}<{remaining}]")
        self._t0 = time.perf_counter()

    def update(self, scalars: dict[str, float], n: int = 1) -> None:
        parts = []
        for label, key, fmt in self.KEYS:
            if key in scalars and scalars[key] is not None:
                parts.append(f"{label} {fmt.format(float(scalars[key]))}")
        self._bar.set_postfix_str(" ".join(parts), refresh=False)
        self._bar.update(n)

    def write(self, text: str) -> None:
        self._bar.write(text) if is_chief() else None

    def close(self) -> None:
        self._bar.close()
