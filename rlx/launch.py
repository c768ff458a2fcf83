"""`python -m rlx.launch [KIND] [CONFIG] [key=value ...]` -- parse, resolve, dispatch.

Kept thin on purpose: each job kind lives in an importable module with a `run(cfg)` function.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from rlx.config import KINDS, REPO_ROOT, ConfigError, dump_yaml, load_config

DEFAULT_CONFIG = REPO_ROOT / "configs" / "quickstart.yaml"

# kind -> (module, what it does). A kind whose module is absent is reported, not a traceback.
JOBS = {
    "train": ("rlx.train.rl", "RL training (GRPO family, PRIME, EMPO, ...)"),
    "sft": ("rlx.train.sft", "supervised fine-tuning"),
    "eval": ("rlx.evaluate", "evaluate a model on datasets: pass@k, maj@k"),
    "serve": ("rlx.serve", "serve a model with JetStream's gRPC server"),
    "plan": ("rlx.plan", "per-device memory plan for each role on a mesh"),
    "bench": ("rlx.bench", "throughput benchmarks"),
}

EPILOG = "job kinds:\n" + "\n".join(f"  {k:<7} {JOBS[k][1]}" for k in KINDS) + """

examples:
  python -m rlx.launch                                   # the quickstart (configs/quickstart.yaml)
  python -m rlx.launch configs/quickstart.yaml trainer.steps=3
  python -m rlx.launch eval configs/eval_math.yaml model.preset=tiny
  python -m rlx.launch configs/quickstart.yaml --print-config
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rlx.launch", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an rlx job. KIND is optional (the config's run.kind is used otherwise); "
                    "CONFIG defaults to configs/quickstart.yaml; key=value pairs override the config.")
    parser.add_argument("args", nargs="*", metavar="[KIND] [CONFIG] [key=value ...]")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")
    parser.add_argument("--port", type=int, default=None, help="serve: gRPC port")
    ns = parser.parse_args(argv)
    kind, config, overrides = None, None, []
    for i, arg in enumerate(ns.args):
        if i == 0 and arg in KINDS:
            kind = arg
        elif "=" in arg:
            overrides.append(arg)
        elif config is None:
            config = arg
        else:
            parser.error(f"unexpected argument '{arg}': give one CONFIG and key=value overrides")
    if kind is None and config is not None and not config.endswith((".yaml", ".yml")) \
            and not Path(config).exists():
        parser.error(f"'{config}' is neither a job kind ({', '.join(KINDS)}) nor a config file")
    ns.kind, ns.config, ns.overrides = kind, config, overrides
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(sys.argv[1:] if argv is None else argv)
    config = ns.config or DEFAULT_CONFIG
    overrides = list(ns.overrides)
    if ns.kind:
        overrides.append(f"run.kind={ns.kind}")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        print(f"rlx: config error: {e}", file=sys.stderr)
        return 2
    if ns.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    module_name, _ = JOBS[cfg.run.kind]
    if cfg.run.kind != "plan":  # planning needs no devices, even for a 256-chip mesh
        from rlx.distributed import maybe_initialize

        maybe_initialize()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            print(f"rlx: job kind '{cfg.run.kind}' is not available in this version of rlx "
                  f"({module_name} is missing). Available kinds: {', '.join(available_kinds())}",
                  file=sys.stderr)
            return 2
        raise
    try:
        module.run(cfg, **({"port": ns.port} if ns.port is not None else {}))
    except ConfigError as e:
        print(f"rlx: config error: {e}", file=sys.stderr)
        return 2
    return 0


def available_kinds() -> list[str]:
    found = []
    for kind in KINDS:
        try:
            spec = importlib.util.find_spec(JOBS[kind][0])
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found.append(kind)
    return found


if __name__ == "__main__":
    sys.exit(main())
