"""Run config: TOML round trip, overrides, validation errors, --help."""
import argparse
import math
from pathlib import Path

import pytest

from cem_nas import config as C

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def test_toml_round_trip_keeps_every_field(tmp_path):
    cfg = C.RunConfig()
    cfg.search.baselines = ["mlp", "vgg"]
    cfg.run.name = 'odd "name"\\x'
    cfg.sampler.lora.rank = 5
    cfg.hooks.gamma_ref = 0.42
    path = tmp_path / "c.toml"
    path.write_text(C.to_toml(cfg, header="test"))
    back = C.load_toml(path)
    assert C.differences(cfg, back) == {}
    assert back.search.baselines == ["mlp", "vgg"] and back.run.name == 'odd "name"\\x'


def test_nan_default_survives_the_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(C.to_toml(C.RunConfig()))
    assert math.isnan(C.load_toml(path).hooks.gamma_ref)


@pytest.mark.parametrize("name", ["default.toml", "paper.toml", "grammar.toml"])
def test_shipped_configs_load(name):
    cfg = C.load_toml(CONFIGS / name)
    assert cfg.search.cycles >= 1


def test_paper_config_is_the_paper_setting():
    cfg = C.load_toml(CONFIGS / "paper.toml")
    assert (cfg.search.cycles, cfg.search.candidates) == (22, 50)
    assert cfg.data.dataset == "cifar10" and cfg.proxy.epochs == 1
    assert cfg.sampler.lora.rank == 32 and cfg.sampler.generation.temperature == 0.35


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[search]\nelite_fracton = 0.2\n")
    with pytest.raises(C.ConfigError, match=r"unknown config key 'search.elite_fracton'.*did you mean 'search.elite_fraction'"):
        C.load_toml(path)


def test_wrong_type_in_toml_names_the_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[search]\ncycles = \"three\"\n")
    with pytest.raises(C.ConfigError, match="search.cycles: expected int"):
        C.load_toml(path)


@pytest.mark.parametrize("path,value,match", [
    ("search.elite_fraction", "0", r"search.elite_fraction = 0.0 is out of range; allowed \(0.0, 1.0\]"),
    ("search.elite_fraction", "1.5", "search.elite_fraction"),
    ("search.novelty_threshold", "0", r"search.novelty_threshold .* allowed \(0.0, 1.0\]"),
    ("search.cycles", "0", r"search.cycles = 0 is out of range; allowed \[1, inf\)"),
    ("sampler.kind", "gpt", "sampler.kind = 'gpt' is not allowed; choose one of llm, grammar"),
    ("sampler.lora.rank", "0", r"\[sampler.lora\] LoRASettings needs rank>=1"),
    ("executor.kind", "ray", "executor.kind = 'ray' is not allowed; choose one of local, dask"),
])
def test_bad_values_name_the_field_and_range(path, value, match):
    with pytest.raises(C.ConfigError, match=match):
        C.apply_overrides(C.RunConfig(), {path: value})


def test_elite_fraction_one_is_allowed():
    assert C.apply_overrides(C.RunConfig(), {"search.elite_fraction": "1"}).search.elite_fraction == 1.0


def test_cli_short_dotted_and_alias_flags():
    p = argparse.ArgumentParser()
    C.add_arguments(p)
    args = p.parse_args(["--cycles", "7", "--elite-fraction", "0.5", "--lora.rank", "4", "--sampler", "grammar",
                         "--baselines", "mlp,vgg", "--progress", "false", "--proxy.lr", "0.1"])
    cfg = C.apply_overrides(C.RunConfig(), C.overrides_from_args(args))
    assert (cfg.search.cycles, cfg.search.elite_fraction, cfg.sampler.lora.rank) == (7, 0.5, 4)
    assert cfg.sampler.kind == "grammar" and cfg.search.baselines == ["mlp", "vgg"]
    assert cfg.run.progress is False and cfg.proxy.lr == 0.1 and cfg.sampler.lora.lr != 0.1


def test_ambiguous_leaf_has_no_short_flag():
    p = argparse.ArgumentParser()
    C.add_arguments(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--lr", "0.1"])  # proxy.lr, lora.lr and warm_start.lr


def test_bad_cli_value_is_a_config_error():
    with pytest.raises(C.ConfigError, match="search.cycles: expected int, got 'x'"):
        C.apply_overrides(C.RunConfig(), {"search.cycles": "x"})


def test_help_lists_every_field_with_its_docstring():
    p = argparse.ArgumentParser()
    C.add_arguments(p)
    text = p.format_help()
    for path, (_, _, doc) in C.leaves().items():
        assert "--" + path in text
        assert doc, f"{path} has no docstring"
    assert "Elite fraction rho" in " ".join(text.split())


def test_resumable_changes_are_real_fields():
    assert set(C.RESUMABLE_CHANGES) <= set(C.leaves())
