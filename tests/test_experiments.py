"""The experiments: CLIs, the ablation grid's cell-by-cell resume, the delta-vs-full
comparison and the proxy study's statistics, on synthetic stores (fast), plus one real
tiny ablation with the grammar sampler (slow)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from analysis.load import as_runs, load
from cem_nas import config as C
from cem_nas.records import STATUSES
from experiments import ablate, compare_generation, proxy_study
from test_analysis import sampled_cem_run


@pytest.fixture
def fake_loop(monkeypatch):
    """Replace the CEM loop by a synthetic store writer; record how it was called."""
    calls = []

    def run_search(cfg, resume_dir=None):
        root = ablate.Path(cfg.run.runs_dir) / cfg.run.name
        calls.append((cfg.run.name, resume_dir is not None))
        sampled_cem_run(root, cycles=cfg.search.cycles, n=40, elite_fraction=cfg.search.elite_fraction,
                        seed=cfg.run.seed, mode=cfg.sampler.mode, name=cfg.run.name)
        (root / "config.toml").write_text(C.to_toml(cfg))
        return root

    monkeypatch.setattr(ablate, "run_search", run_search)
    return calls


def test_clis_parse_and_show_help(capsys):
    for module in (ablate, compare_generation, proxy_study):
        with pytest.raises(SystemExit) as e:
            module.main(["--help"])
        assert e.value.code == 0
    assert "--elite-fractions" in capsys.readouterr().out
    args = ablate.parser().parse_args(["--elite-fractions", "0.1", "0.3", "--seeds", "0", "1", "--cycles", "2"])
    assert args.elite_fractions == [0.1, 0.3] and args.seeds == [0, 1]
    assert C.overrides_from_args(args) == {"search.cycles": "2"}
    args = proxy_study.parser().parse_args(["runs/x", "--epochs", "1", "3", "--seeds", "2"])
    assert args.epochs == [1, 3] and args.seeds == 2


def test_ablate_rejects_bad_grid_values(tmp_path, capsys):
    assert ablate.main(["--elite-fractions", "0", "0.5", "--out", str(tmp_path)]) == 2
    assert "--elite-fractions must lie in (0, 1]" in capsys.readouterr().err


def test_ablation_grid_runs_skips_and_resumes_cell_by_cell(tmp_path, fake_loop):
    argv = ["--elite-fractions", "0.2", "0.5", "--novelty-thresholds", "0.9", "--cycles", "2", "--out", str(tmp_path)]
    assert ablate.main(argv) == 0
    assert fake_loop == [("ef0.2_nt0.9_s0", False), ("ef0.5_nt0.9_s0", False)]
    grid = load(tmp_path / "ablation.nc")
    assert dict(grid.sizes)["elite_fraction"] == 2 and dict(grid.sizes)["novelty_threshold"] == 1
    assert dict(grid.sizes)["seed"] == 1 and dict(grid.sizes)["cycle"] == 2
    cfg = C.load_toml(tmp_path / "cells" / "ef0.5_nt0.9_s0" / "config.toml")
    assert cfg.search.elite_fraction == 0.5 and cfg.novelty.enabled and cfg.sampler.kind == "grammar"
    # finished cells are skipped ...
    fake_loop.clear()
    assert ablate.main(argv) == 0 and fake_loop == []
    # ... and with more cycles asked for, each cell continues from where it stopped
    assert ablate.main(argv[:-4] + ["--cycles", "3", "--out", str(tmp_path)]) == 0
    assert fake_loop == [("ef0.2_nt0.9_s0", True), ("ef0.5_nt0.9_s0", True)]
    assert dict(load(tmp_path / "ablation.nc").sizes)["cycle"] == 3


def test_ablation_refuses_a_cell_run_with_another_config(tmp_path, fake_loop, capsys):
    argv = ["--elite-fractions", "0.2", "--novelty-thresholds", "0.9", "--cycles", "1", "--out", str(tmp_path)]
    assert ablate.main(argv) == 0
    assert ablate.main(argv + ["--candidates", "5"]) == 2
    assert "another config" in capsys.readouterr().err


def test_compare_generation_on_existing_runs(tmp_path, capsys):
    delta = sampled_cem_run(tmp_path / "delta_s0", mode="delta", cycles=2, n=150, seed=1)
    full = sampled_cem_run(tmp_path / "full_s0", mode="full", cycles=2, n=150, seed=2)
    for cycle in (full / "cycles").glob("*.nc"):  # full generation: 1 in 3 proposals fails to parse
        ds = xr.load_dataset(cycle)
        status = ds["status"].values.astype(object)
        status[:, ::3] = "parse_error"
        ds["status"] = (ds["status"].dims, status)
        ds.to_netcdf(cycle)
    out = tmp_path / "cmp"
    assert compare_generation.main(["--runs", str(delta), str(full), "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert "**Verdict: supported**" in md and "| status parse_error | 0 | 100 |" in md
    nc = xr.load_dataset(out / "compare.nc")
    assert list(nc["mode"].values) == ["delta", "full"]
    assert nc["valid_rate"].sel(mode="full") == pytest.approx(200 / 300)
    assert int(nc["status_count"].sel(mode="full", status_kind="parse_error")) == 100
    assert nc["lines_per_proposal"].sel(mode="delta") == 12


def test_compare_generation_refuses_the_grammar_sampler(tmp_path, capsys):
    assert compare_generation.main(["--sampler", "grammar", "--out", str(tmp_path)]) == 2
    assert "set --sampler llm" in capsys.readouterr().err


def test_proxy_study_selects_top_and_stratified_architectures(tmp_path):
    runs = as_runs(load(sampled_cem_run(tmp_path / "r", cycles=2, n=100, n_arch=60, noise=0.02, seed=3)))
    archs = proxy_study.select_architectures(runs, top=3, random=4, seed=0)
    assert [a["group"] for a in archs] == ["top"] * 3 + ["random"] * 4
    assert len({a["code"] for a in archs}) == 7
    scores = np.array([a["score"] for a in archs])
    everything = runs["score"].values[np.isfinite(runs["score"].values)]
    assert scores[0] == everything.max() and np.all(np.diff(scores[:3]) <= 0)
    assert scores[3:].max() <= scores[2]  # random draws come from below the top
    with pytest.raises(ValueError, match="top \\+ random >= 1"):
        proxy_study.select_architectures(runs, 0, 0)


def synthetic_study(n, icc_proxy, icc_final, fidelity, seeds=3, seed=0):
    """acc (arch, epochs=[1, 10], seed) with known reliabilities and latent correlation."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    b = fidelity * a + math.sqrt(1 - fidelity ** 2) * rng.standard_normal(n)
    one = math.sqrt(icc_proxy) * a[:, None] + math.sqrt(1 - icc_proxy) * rng.standard_normal((n, seeds))
    ten = math.sqrt(icc_final) * b[:, None] + math.sqrt(1 - icc_final) * rng.standard_normal((n, seeds))
    return xr.DataArray(np.stack([one, ten], axis=1), dims=("arch", "epochs", "seed"),
                        coords={"epochs": [1, 10]})


def test_proxy_statistics_recover_reliabilities_and_the_fidelity_bound():
    st = proxy_study.proxy_statistics(synthetic_study(800, 0.6, 0.9, fidelity=1.0))
    assert st.n == 800 and st.proxy_epochs == 1 and st.final_epochs == 10
    assert st.icc_proxy.ci_low <= 0.6 <= st.icc_proxy.ci_high
    assert st.icc_final.ci_low <= 0.9 <= st.icc_final.ci_high
    rel_mean = 3 * 0.9 / (1 + 2 * 0.9)
    bound = math.sqrt(0.6 * rel_mean)
    assert st.pearson_bound == pytest.approx(bound, abs=0.03)
    # fidelity 1: the observed rank correlation sits at the bound, within its CI
    assert st.spearman_ci[0] <= st.spearman_moran_bound <= st.spearman_ci[1]
    assert abs(st.fidelity - 1) < 0.1
    # fidelity 0.7: the observed correlation falls clearly below the bound, and is estimated
    low = proxy_study.proxy_statistics(synthetic_study(800, 0.6, 0.9, fidelity=0.7, seed=1))
    assert low.spearman_ci[1] < low.spearman_moran_bound
    assert abs(low.fidelity - 0.7) < 0.1
    text = proxy_study.markdown(low, [{"group": "top"}] * 800)
    assert "below the reliability bound" in text


def test_proxy_statistics_refuse_a_single_seed():
    with pytest.raises(ValueError, match=">= 2 seeds"):
        proxy_study.proxy_statistics(synthetic_study(50, 0.5, 0.5, 1.0, seeds=1))


@pytest.mark.slow
def test_tiny_real_ablation_with_the_grammar_sampler(tmp_path):
    argv = ["--elite-fractions", "0.25", "0.5", "--novelty-thresholds", "0.9", "--cycles", "1",
            "--candidates", "4", "--max-train", "200", "--max-test", "100", "--out", str(tmp_path), "--report"]
    assert ablate.main(argv) == 0
    grid = load(tmp_path / "ablation.nc")
    assert dict(grid.sizes)["elite_fraction"] == 2 and int(grid["n_cand"].sum()) == 8
    statuses = grid["status"].values.astype(str)
    assert statuses[statuses != ""].size == 8 and set(statuses[statuses != ""]) <= set(STATUSES)
    assert "**Verdict: " in (tmp_path / "report" / "report.md").read_text()


def test_proxy_study_says_when_there_are_too_few_architectures():
    st = proxy_study.proxy_statistics(synthetic_study(6, 0.8, 0.9, fidelity=1.0, seed=2))
    assert "not enough data: 6 architectures" in proxy_study.markdown(st, [{"group": "top"}] * 6)


def test_compare_samplers_cells_skip_and_summary(tmp_path, fake_loop, capsys):
    from experiments import compare_samplers as cs

    argv = ["--seeds", "0", "1", "--cycles", "3", "--candidates", "8", "--out", str(tmp_path), "--target", "0.9"]
    assert cs.main(argv) == 0
    assert [name for name, _ in fake_loop] == ["llm_s0", "grammar_s0", "random_s0", "llm_s1", "grammar_s1", "random_s1"]
    out = capsys.readouterr().out
    assert "llm - random, best so far of the last cycle" in out and "llm - random, elite mean" in out
    ds = xr.open_dataset(tmp_path / "compare_samplers.nc").load()
    assert list(ds.sampler.values) == ["llm", "grammar", "random"] and ds.sizes["seed"] == 2
    assert (ds.target == 0.9).all() and ds["candidates"].values.tolist() == [40, 80, 120]  # the fake writes 40 a cycle
    for name in ("llm_s0", "random_s1"):
        run = load(tmp_path / "cells" / name)
        hits = np.flatnonzero(np.nan_to_num(run.score.values.ravel(), nan=-1) >= 0.9)
        sampler, seed = name.split("_s")
        assert float(ds.candidates_to_reach.sel(sampler=sampler, seed=int(seed))) == hits[0] + 1
    assert cs.main(argv) == 0 and len(fake_loop) == 6  # resumable: finished runs are skipped


@pytest.mark.slow
def test_compare_samplers_runs_resumes_and_summarises(tmp_path, capsys):
    from experiments import compare_samplers as cs

    argv = ["--samplers", "grammar", "random", "--seeds", "0", "1", "--out", str(tmp_path), "--config",
            str(cs.CONFIGS / "grammar.toml"), "--baselines", "mlp", "--max-train", "200", "--max-test", "100",
            "--cycles", "2", "--candidates", "4", "--replicate-seeds", "1", "--progress", "false"]
    assert cs.main(argv) == 0
    out = capsys.readouterr().out
    ds = xr.open_dataset(tmp_path / "compare_samplers.nc").load()
    assert dict(ds.sizes) == {"sampler": 2, "seed": 2, "cycle": 2} and ds["candidates"].values.tolist() == [4, 8]
    assert (ds.best_so_far.diff("cycle") >= 0).all() and (tmp_path / "compare_samplers.png").stat().st_size > 5000
    run = load(tmp_path / "cells" / "random_s1")
    assert run.attrs["sampler"] == "random" and (run.alpha.values[1:] == 0).all()
    target = float(run.zoo_score.max())
    assert float(ds.target.sel(sampler="random", seed=1)) == target  # default: the run's best zoo baseline
    flat = run.score.values.ravel()
    hits = np.flatnonzero(np.nan_to_num(flat, nan=-1) >= target)
    reach = float(ds.candidates_to_reach.sel(sampler="random", seed=1))
    assert reach == hits[0] + 1 if len(hits) else math.isnan(reach)
    assert ds.best_so_far_mean.sel(sampler="grammar", cycle=1) == pytest.approx(
        float(ds.best_so_far.sel(sampler="grammar", cycle=1).mean()))
    assert "random" in out and "target" in out
    assert cs.main(argv) == 0 and capsys.readouterr().out.count(": complete") == 4  # resumable: nothing reruns


def test_compare_samplers_difference_intervals():
    from experiments import compare_samplers as cs

    best = np.array([[[0.5, 0.8], [0.5, 0.82], [0.5, 0.81]], [[0.5, 0.6], [0.5, 0.62], [0.5, 0.58]]])
    ds = xr.Dataset({"best_so_far": (("sampler", "seed", "cycle"), best),
                     "elite_mean": (("sampler", "seed", "cycle"), best - 0.1)},
                    coords={"sampler": ["llm", "random"]}, attrs={"level": 0.95})
    d, lo, hi = cs.versus(ds, "llm", "random")["best_so_far"]
    assert d == pytest.approx(0.21) and 0 < lo < d < hi
