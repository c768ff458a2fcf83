"""Serving through JetStream: its own Driver and gRPC server run an rlx engine, and its gRPC
client stub gets the engine's own greedy tokens back. Skipped without `rlx[jetstream]`."""

import importlib.util
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAS_JETSTREAM = importlib.util.find_spec("jetstream") is not None

SERVER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from rlx.engine import Engine, EngineConfig, SamplingConfig, rollout
    from rlx.engine.jetstream_adapter import serve
    from rlx.models import from_preset
    from test_engine_serving import CjkTokenizer

    tok = CjkTokenizer()
    engine = Engine(from_preset("tiny"), EngineConfig(
        max_concurrent_decodes=4, max_prefill_length=32, max_cache_len=64,
        sampling=SamplingConfig(temperature=0.0), eos_ids=(tok.eos_id,)))
    # The engine's own greedy output, straight from rollout, to hold the server's against.
    prompts = [[tok.bos_id] + tok.encode(t) for t in {texts!r}]
    direct = rollout(None, prompts, max_new_tokens={max_tokens}, temperature=0.0, engine=engine)
    want = [direct.response_ids[i][direct.response_mask[i] == 1].tolist() for i in range(len(prompts))]
    print("DIRECT " + json.dumps([[w, str(r)] for w, r in zip(want, direct.finish_reason)]), flush=True)
    server = serve(engine, tok, {port})
    print("SERVING", flush=True)
    server.wait_for_termination()
""")


class CjkTokenizer:
    """Token t <-> one CJK character, so per-token and whole-sequence decoding agree."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text):
        return [ord(c) - 0x4E00 for c in text]

    def decode(self, ids):
        return "".join(chr(0x4E00 + t) for t in ids)


def test_core_engine_imports_no_tensorflow():
    code = "import sys, rlx.engine; bad = [m for m in ('tensorflow', 'jetstream') if m in sys.modules]; " \
           "assert not bad, bad"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_for(path: Path, marker: str, proc, timeout: float) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if any(l.startswith(marker) for l in lines):
            return lines
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"server did not print {marker!r}; its output ends:\n{path.read_text()[-3000:]}")


@pytest.mark.skipif(not HAS_JETSTREAM, reason="google-jetstream not installed (pip install 'rlx[jetstream]')")
def test_jetstream_grpc_server_returns_engine_greedy_text(tmp_path):
    import json

    import grpc
    from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc

    tok = CjkTokenizer()
    texts = [tok.decode([5, 77, 300, 12]), tok.decode(list(range(40, 61)))]
    max_tokens, port = 12, _free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "JAX_PLATFORMS": "cpu"}
    log = tmp_path / "server.log"
    script = SERVER.format(root=str(ROOT), port=port, texts=texts, max_tokens=max_tokens)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        lines = _wait_for(log, "SERVING", proc, timeout=400)
        direct = json.loads(next(l for l in lines if l.startswith("DIRECT "))[len("DIRECT "):])
        channel = grpc.insecure_channel(f"localhost:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = jetstream_pb2_grpc.OrchestratorStub(channel)
        for text, (want, reason) in zip(texts, direct):
            request = jetstream_pb2.DecodeRequest(
                text_content=jetstream_pb2.DecodeRequest.TextContent(text=text), max_tokens=max_tokens)
            got_ids, got_text = [], ""
            for response in stub.Decode(request, timeout=300):
                for sample in response.stream_content.samples:
                    got_ids.extend(sample.token_ids)
                    got_text += sample.text
            want = want[:-1] if reason == "eos" else want  # JetStream does not stream the EOS token
            assert got_ids == want, (text, got_ids, want)
            assert got_text == tok.decode(want)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
