"""Sampling through an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server).

The run keeps the LLM in-process for the CE update (peft, as with the ``hf`` engine) and
sends generation to a server that is fast at it. After every change of the adapter (warm
start, CE update, resume) the adapter is written to ``adapter_dir`` and loaded into the
server under a new name through its dynamic LoRA API, and the next proposals are sampled
with that name as the model:

- ``vllm``: ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` with
  ``{"lora_name", "lora_path"}`` (vLLM started with ``--enable-lora`` and
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``);
- ``sglang``: ``POST /load_lora_adapter`` and ``/unload_lora_adapter``, same body
  (SGLang started with ``--enable-lora``);
- ``none``: no hand-off; every proposal comes from the server's base model, so the CE
  update does not reach the samples (for a smoke test, or a server without the API).

Prompts are sent as text to ``/v1/completions`` (they are already chat-templated), ``n``
completions per distinct prompt in one request when the server honours ``n`` (vLLM,
SGLang share the prompt's prefill), otherwise one request per completion, in parallel.
The answer is cut after its first closed fenced block here, as in-process; the stop
reason is ``fence`` when the block closed, else ``length`` when the server reports the
token limit, else ``eos``.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ADAPTER_APIS = ("vllm", "sglang", "none")
_ROUTES = {"vllm": ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"),
           "sglang": ("/load_lora_adapter", "/unload_lora_adapter")}


class EngineError(RuntimeError):
    """The server could not be reached, refused a request, or answered nonsense."""


@dataclass
class OpenAISettings:
    """Where the ``openai`` engine sends generation."""

    url: str = "http://127.0.0.1:8000"
    """Base URL of the OpenAI-compatible server (without /v1)."""
    model: str = ""
    """Served name of the base model (vLLM's --served-model-name); empty: the first the
    server lists under /v1/models."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key, if the server wants one (never stored)."""
    adapter_api: str = "vllm"
    """How the CE update's adapter reaches the server: vllm, sglang or none (see the module doc)."""
    adapter_dir: str = ""
    """Directory the server can read where each adapter is written (shared disk for a remote
    server); empty: adapters/ under the user cache."""
    timeout_s: float = 600.0
    """Seconds one HTTP request may take."""
    parallel: int = 16
    """Requests in flight at once when the server does not honour ``n``."""
    top_k_off: int = 0
    """The top_k value this server reads as 'no top-k cut', sent when generation.top_k is 0
    (0: llama.cpp's server, which refuses -1, and recent vLLM; -1: SGLang, older vLLM)."""

    def __post_init__(self) -> None:
        if self.adapter_api not in ADAPTER_APIS:
            raise ValueError(f"openai.adapter_api must be one of {ADAPTER_APIS}; got {self.adapter_api!r}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"openai.url must start with http:// or https://; got {self.url!r}")
        if self.timeout_s <= 0 or self.parallel < 1:
            raise ValueError(f"openai.timeout_s must be > 0 and openai.parallel >= 1; got {self}")


@dataclass
class RemoteCompletion:
    text: str
    """The raw completion text the server returned."""
    finish_reason: str
    """The server's finish_reason: stop (EOS or a stop string) or length."""


class OpenAIEngine:
    """A client of one OpenAI-compatible server, with the dynamic LoRA hand-off."""

    def __init__(self, settings: OpenAISettings):
        self.settings = settings
        self.base = settings.url.rstrip("/")
        self.served = settings.model
        self.adapter: str | None = None  # the name samples are drawn with, once loaded
        self._n_ok: bool | None = None

    # -- HTTP -------------------------------------------------------------------------
    def _request(self, route: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.settings.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + route, data=data, headers=headers, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:500].decode(errors="replace")
            raise EngineError(f"{self.base}{route} answered HTTP {err.code}: {detail}") from err
        except (urllib.error.URLError, OSError) as err:
            raise EngineError(
                f"cannot reach the OpenAI-compatible server at {self.base} ({err}); start it (README: "
                f"'Sampling on a serving engine') or set sampler.openai.url"
            ) from err
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as err:
            raise EngineError(f"{self.base}{route} answered non-JSON: {raw[:200]!r}") from err

    def model_name(self) -> str:
        """The served base model's name (asked once from /v1/models when not configured)."""
        if not self.served:
            listed = self._request("/v1/models").get("data") or []
            if not listed:
                raise EngineError(f"{self.base}/v1/models lists no model; set sampler.openai.model")
            self.served = str(listed[0]["id"])
        return self.served

    # -- sampling -----------------------------------------------------------------------
    def _complete(self, prompt: str, n: int, params: dict, seed: int) -> list[RemoteCompletion]:
        body = {"model": self.adapter or self.model_name(), "prompt": prompt, "n": n, "seed": seed} | params
        choices = self._request("/v1/completions", body).get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices):
            raise EngineError(f"{self.base}/v1/completions answered without choices[].text: {str(choices)[:200]}")
        choices = sorted(choices, key=lambda c: c.get("index", 0))
        return [RemoteCompletion(c["text"], str(c.get("finish_reason") or "stop")) for c in choices]

    def complete(self, prompts: list[str], params: dict, seed: int) -> list[RemoteCompletion]:
        """One completion per prompt; equal prompts go out as one request with ``n``.

        ``params``: temperature, top_p, top_k, max_tokens, repetition_penalty. Request j is
        seeded ``seed + j``. A server that answers fewer choices than ``n`` is asked one
        completion per request from then on.
        """
        groups: dict[str, list[int]] = {}
        for row, p in enumerate(prompts):
            groups.setdefault(p, []).append(row)
        out: list[RemoteCompletion | None] = [None] * len(prompts)
        jobs = []
        for j, (prompt, rows) in enumerate(groups.items()):
            if self._n_ok is not False:
                got = self._complete(prompt, len(rows), params, seed + j * 1000)
                if len(got) == len(rows):
                    self._n_ok = True
                    for row, c in zip(rows, got):
                        out[row] = c
                    continue
                self._n_ok = False
            jobs += [(row, prompt, seed + j * 1000 + i) for i, row in enumerate(rows) if out[row] is None]
        if jobs:
            with ThreadPoolExecutor(max_workers=self.settings.parallel) as pool:
                for (row, _, _), got in zip(jobs, pool.map(lambda job: self._complete(job[1], 1, params, job[2])[0], jobs)):
                    out[row] = got
        return out  # type: ignore[return-value]

    # -- the adapter hand-off -------------------------------------------------------------
    def load_adapter(self, name: str, path: Path) -> None:
        """Make the server sample with the adapter in ``path`` under ``name`` (drops the last)."""
        api = self.settings.adapter_api
        if api == "none":
            return
        load, unload = _ROUTES[api]
        try:
            self._request(load, {"lora_name": name, "lora_path": str(Path(path).resolve())})
        except EngineError as err:
            raise EngineError(
                f"the server at {self.base} did not load the adapter through {api}'s dynamic LoRA API ({err}). "
                f"Start vLLM with --enable-lora --max-lora-rank R and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or "
                f"SGLang with --enable-lora, or set sampler.openai.adapter_api = none (samples then ignore the CE update)"
            ) from err
        previous, self.adapter = self.adapter, name
        if previous is not None:
            try:
                self._request(unload, {"lora_name": previous})
            except EngineError:  # the old adapter only costs server memory; sampling goes on
                pass
