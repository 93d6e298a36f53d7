"""Foreseeable failures are one ``error:`` line and exit 2 before any model or data load."""
from pathlib import Path

import pytest

from cem_nas import preflight
from cem_nas.config import RunConfig, apply_overrides
from experiments import cem_run

PAPER = Path(cem_run.__file__).parent / "configs" / "paper.toml"


@pytest.fixture
def offline(monkeypatch):
    """This machine as CI sees it: no route to dataset hosts or the hub, no CUDA."""
    monkeypatch.setattr(preflight, "reachable", lambda host, port=443, timeout=0: False)
    monkeypatch.setattr(preflight, "_cuda_available", lambda: False)


def test_paper_config_stops_early_with_one_line_per_problem(tmp_path, offline, capsys, monkeypatch):
    monkeypatch.setenv("CEM_NAS_CACHE", str(tmp_path / "cache"))
    rc = cem_run.main(["--config", str(PAPER), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and all(line.startswith("error: ") for line in err)
    text = "\n".join(err)
    assert "dataset 'cifar10' must be downloaded" in text and "--root" in text
    assert "deepseek-ai/deepseek-coder-6.7b-instruct" in text and "--model qwen2.5-coder-0.5b" in text
    assert "sampler.device = 'cuda'" in text and "proxy.device = 'cuda'" in text
    assert "Traceback" not in text and not (tmp_path / "runs").exists()  # nothing was started


def test_offline_defaults_have_no_problem(offline):
    assert preflight.problems(RunConfig()) == []
    assert preflight.problems(apply_overrides(RunConfig(), {"sampler.kind": "grammar"})) == []


def test_missing_dataset_passes_when_it_can_be_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "reachable", lambda host, port=443, timeout=0: host == "www.cs.toronto.edu")
    cfg = apply_overrides(RunConfig(), {"data.dataset": "cifar10", "data.root": str(tmp_path)})
    assert preflight.dataset_problem(cfg) is None
    cfg.data.download = False
    assert "data.download is false" in preflight.dataset_problem(cfg)


def test_dataset_on_disk_needs_no_network(tmp_path, offline):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"")
    cfg = apply_overrides(RunConfig(), {"data.dataset": "cifar10", "data.root": str(tmp_path)})
    assert preflight.dataset_problem(cfg) is None


def test_model_sources(tmp_path, offline, monkeypatch):
    def problem(model):
        return preflight.model_problem(apply_overrides(RunConfig(), {"sampler.model": model}))

    assert problem(str(tmp_path)) is None  # an existing local directory
    assert "does not exist" in problem(str(tmp_path / "nope"))
    assert "cannot reach huggingface.co" in problem("someone/some-model")
    monkeypatch.setattr(preflight, "reachable", lambda host, port=443, timeout=0: True)
    assert problem("someone/some-model") is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE" in problem("someone/some-model")


def test_unreachable_port_is_reported_quickly():
    # a closed local port refuses at once: the probe answers False without waiting
    assert preflight.reachable("127.0.0.1", port=9, timeout=1.0) is False


def test_quick_is_a_small_run_under_explicit_overrides():
    cfg, resume = cem_run.resolve(cem_run.parser().parse_args(["--quick", "--cycles", "3"]))
    assert resume is None and cfg.run.name == "quick" and cfg.search.cycles == 3  # the explicit option wins
    assert cfg.search.candidates == 6 and cfg.sampler.warm_start.steps == 6
    assert cem_run.main(["--quick", "--resume", "runs/x"]) == 2
