"""The openai engine against a real OpenAI-compatible server: llama-cpp-python's, on the
embedded SmolLM2 GGUF, started by the test. The server is not a project dependency (it
builds from source, ~3.5 min on 2 cores, see README "Sampling on a serving engine"), so
those tests are slow and skip where it is not installed; the unreachable-server test runs
everywhere."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from cem_nas.records import Baseline, Elite, TaskSpec
from cem_nas.sampler.openai_engine import EngineError, OpenAIEngine, OpenAISettings

TASK = TaskSpec("mnist5k", (1, 28, 28), 10)
needs_server = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python[server] is not installed (README: 'Sampling on a serving engine')",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_clear_error_within_seconds():
    engine = OpenAIEngine(OpenAISettings(url=f"http://127.0.0.1:{free_port()}", timeout_s=5))
    t0 = time.perf_counter()
    with pytest.raises(EngineError, match="cannot reach the OpenAI-compatible server"):
        engine.complete(["hello"], {"max_tokens": 4}, seed=0)
    assert time.perf_counter() - t0 < 10


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="adapter_api"):
        OpenAISettings(adapter_api="tgi")
    with pytest.raises(ValueError, match="http"):
        OpenAISettings(url="localhost:8000")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cem_nas.sampler.model import embedded_gguf

    port = free_port()
    # a file, not a pipe: llama.cpp logs more while loading than a pipe buffer holds, and
    # a full pipe would block the server
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w+")
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf("smollm2")), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read()[-2000:]!r}")
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("llama_cpp.server did not answer /v1/models within 180 s")
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def loaded():
    from cem_nas.sampler.model import load_model

    return load_model("smollm2", "cpu")


def make_sampler(loaded, url: str, adapter_api: str, tmp_path):
    from cem_nas.sampler.llm import GenerationSettings, LLMSampler, LoRASettings, WarmStartSettings

    return LLMSampler(TASK, loaded, engine="openai",
                      openai=OpenAISettings(url=url, adapter_api=adapter_api, adapter_dir=str(tmp_path)),
                      generation=GenerationSettings(max_new_tokens=24, temperature=0.5),
                      lora=LoRASettings(steps=1, batch_size=2), warm_start=WarmStartSettings(enabled=False))


@pytest.mark.slow
@needs_server
def test_proposals_come_from_the_server(server, loaded, tmp_path):
    """Proposals are sampled on the server, cut and classified as in-process; the update
    still trains the in-process adapter."""
    from cem_nas import zoo

    sampler = make_sampler(loaded, server, "none", tmp_path)
    baselines = [Baseline(n, zoo.source(n)) for n in zoo.names()[:2]]
    proposals = sampler.propose(baselines, 4, np.random.default_rng(0))
    assert len(proposals) == 4 and {p.baseline for p in proposals} == {b.name for b in baselines}
    for p in proposals:
        assert p.response.strip(), "the server returned an empty completion"
        assert p.stop_reason in ("eos", "fence", "length") and p.prompt_tokens > 500
        # the token count is ours (the server's tokenizer is the same model's): within the budget
        assert 0 < p.completion_tokens <= 24 + 2
    assert any(p.stop_reason == "length" for p in proposals)  # the untuned model rambles past 24 tokens
    elite = Elite(proposals[0].baseline, proposals[0].prompt, sampler.corpus_examples()[0][1], 1.0, 0)
    stats = sampler.update([elite])
    assert stats.steps == 1 and sampler._stale


@pytest.mark.slow
@needs_server
def test_adapter_hand_off_needs_a_server_with_the_lora_api(server, loaded, tmp_path):
    """llama.cpp's server has no dynamic LoRA loading: the hand-off fails with an error
    that says what to run instead, after writing the adapter for the server."""
    sampler = make_sampler(loaded, server, "vllm", tmp_path)
    with pytest.raises(EngineError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        sampler.generate([sampler.prompt_for("import torch\n")])
    written = list(tmp_path.iterdir())
    assert len(written) == 1 and (written[0] / "adapter_config.json").is_file()
