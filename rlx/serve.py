"""`python -m rlx.launch serve CONFIG --port P`: JetStream's gRPC server on the rlx Engine.

JetStream (and the TensorFlow it pulls in) is imported only here, on demand, so rlx's core
never loads it.
"""

from __future__ import annotations

from rlx.build import build_mesh, build_model, build_tokenizer
from rlx.config import Config, ConfigError


def run(cfg: Config, port: int = 9000) -> None:
    try:
        from rlx.engine.jetstream_adapter import serve
    except ModuleNotFoundError as e:
        raise ConfigError(f"serving needs JetStream ({e.name} is not installed): "
                          f"pip install -e '.[jetstream]'") from None
    from rlx.engine import Engine, EngineConfig

    tokenizer = build_tokenizer(cfg.tokenizer, cfg.model)
    model = build_model(cfg.model, seed=cfg.run.seed, mesh=build_mesh(cfg.mesh))
    e = cfg.engine
    engine = Engine(model, EngineConfig(max_concurrent_decodes=e.max_concurrent_decodes,
                                        max_prefill_length=e.max_prefill_length,
                                        max_cache_len=e.max_cache_len, steps_per_sync=1,
                                        eos_ids=tuple(tokenizer.eos_ids)))
    try:
        server = serve(engine, tokenizer, port)
    except ValueError as err:
        raise ConfigError(f"engine: {err}") from None
    print(f"rlx: JetStream gRPC server on port {port} "
          f"({e.max_concurrent_decodes} slots, prompts up to {e.max_prefill_length} tokens)", flush=True)
    server.wait_for_termination()
