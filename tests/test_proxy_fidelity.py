"""The proxy-fidelity study: budgets, the seeded architecture set, the statistics on
synthetic data with known answers, and one tiny real study through the sandbox pool that
is resumed and extended by a budget without retraining."""
from __future__ import annotations

import ast
import json
import math

import numpy as np
import pytest
import xarray as xr

from cem_nas import zoo
from cem_nas.evaluate import normalise_code
from experiments import proxy_fidelity as pf
from theory import reliability


def test_budget_parse_label_and_errors():
    b = pf.Budget.parse("0:0:2:32:0.02")
    assert (b.max_train, b.max_test, b.epochs, b.batch_size, b.lr) == (0, 0, 2, 32, 0.02)
    assert b.label == "nall_tall_e2_b32_lr0.02"
    for bad in ("1000:500:1:64", "a:0:1:64:0.01", "0:0:0:64:0.01", "0:0:1:64:-1", "0:0:1:64:0.01:9"):
        with pytest.raises(ValueError, match="TRAIN:TEST:EPOCHS:BATCH:LR|sizes must be"):
            pf.Budget.parse(bad)


def test_architectures_are_the_zoo_plus_distinct_seeded_mutations():
    archs = pf.architectures(20, seed=3)
    names = zoo.names()
    assert [a["name"] for a in archs[:len(names)]] == names
    mutated = archs[len(names):]
    assert len(mutated) == 20
    assert [a["group"] for a in mutated] == ["single_edit"] * 10 + ["grammar"] * 10
    assert all(a["mutation"].count("=") == 1 for a in mutated[:10])
    keys = [normalise_code(a["code"]) for a in archs]
    assert len(set(keys)) == len(keys)  # no repeats, none equal to its baseline
    for a in mutated:
        ast.parse(a["code"])
        assert "# variant:" not in a["code"]  # the neutral tag is never drawn
    assert [a["code"] for a in pf.architectures(20, seed=3)] == [a["code"] for a in archs]
    assert [a["code"] for a in pf.architectures(20, seed=4)] != [a["code"] for a in archs]


def synthetic(n: int, noise: tuple[float, ...], seed: int = 0):
    """(budget, arch, seed=2) accuracies: one true quality per architecture plus noise."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.3, 0.9, n)
    acc = np.stack([q[:, None] + rng.normal(0, s, (n, 2)) for s in noise])
    return q, acc


def test_statistics_recover_the_icc_and_rank_agreement():
    n, sd_q = 400, 0.6 / math.sqrt(12)
    q, acc = synthetic(n, (0.01, 0.1, 0.0))
    status = np.full(acc.shape, "ok", dtype=object)
    st = pf.budget_statistics(acc, status, np.ones(acc.shape), 0, np.ones(n, bool))
    true_icc = sd_q**2 / (sd_q**2 + 0.1**2)
    # the F-based interval covers the population value, and is narrow at n = 400
    assert st["icc_lo"][1] < true_icc < st["icc_hi"][1] and st["icc_hi"][1] - st["icc_lo"][1] < 0.1
    assert st["spearman"][2] == pytest.approx(stats_spearman(q, acc[0].mean(1)), abs=1e-12)
    assert st["spearman"][2] > 0.99 > st["spearman"][1]
    assert st["spearman_lo"][1] < st["spearman"][1] < st["spearman_hi"][1]
    assert math.isnan(st["spearman"][0]) and st["n_ranked"][1] == n
    assert st["chance_share"][2] == 0 and st["train_s_median"][1] == 1.0  # q >= 0.3 > 1.2 x chance


def stats_spearman(x, y):
    from scipy import stats
    return stats.spearmanr(x, y).statistic


def test_statistics_count_chance_and_leave_out_failed_runs():
    _, acc = synthetic(10, (0.01, 0.01))
    acc[1, :3] = 0.1  # three architectures at chance in both seeds
    status = np.full(acc.shape, "ok", dtype=object)
    status[1, :3] = "low_accuracy"
    status[1, 9] = "build_error"  # not trained: neither in the share nor ranked
    acc[1, 9] = np.nan
    zoo_mask = np.zeros(10, bool)
    zoo_mask[:4] = True
    acc[0, 0] = 0.1  # ... and the first never learns at the reference either
    st = pf.budget_statistics(acc, status, np.ones(acc.shape), 0, zoo_mask)
    assert st["n_trained"][1] == 18 and st["chance_share"][1] == 6 / 18
    assert st["chance_learnable"][1] == 4 / 16  # architecture 0 is not learnable: not counted
    assert st["n_ranked"][1] == 9
    assert st["zoo_median"][1] == pytest.approx(np.median([0.1, 0.1, 0.1, acc[1, 3].mean()]))


def test_the_icc_is_the_theory_estimator():
    _, acc = synthetic(30, (0.05, 0.05), seed=5)
    st = pf.budget_statistics(acc, np.full(acc.shape, "ok", dtype=object), np.ones(acc.shape), 0,
                              np.ones(30, bool))
    assert st["icc"][1] == reliability.icc1(acc[1]).icc


def test_tiny_real_study_resumes_and_reuses_the_reference(tmp_path, capsys):
    out = tmp_path / "study"
    # mlp and its 5 mutations among the first 45 (baselines in turn): small and quick to train
    common = ["--zoo", "mlp", "--mutations", "45", "--reference", "300:150:2:32:0.01", "--workers", "1",
              "--out", str(out), "--no-progress"]
    assert pf.main([*common, "--budgets", "150:150:1:32:0.01"]) == 0
    first = capsys.readouterr().out
    assert "6 architectures x 2 budgets x 2 seeds" in first and "(24 runs trained" in first
    ds = xr.open_dataset(out / "proxy_fidelity.nc")
    assert ds.sizes == {"budget": 2, "arch": 6, "seed": 2}
    assert set(ds["status"].values.ravel()) <= {"ok", "low_accuracy"}
    assert np.isfinite(ds["accuracy"]).all() and (ds["train_seconds"] > 0).all()
    assert bool(ds["is_reference"][0]) and np.isfinite(ds["spearman"][1])
    ds.close()
    entries = len(json.loads((out / pf.CACHE_FILE).read_text())["entries"])
    assert entries == 24
    # one budget more: only its runs are trained, the reference and the first budget are reused
    assert pf.main([*common, "--budgets", "150:150:1:32:0.01", "150:150:1:16:0.01"]) == 0
    second = capsys.readouterr().out
    assert "(12 runs trained" in second
    assert "**recommended**" in second or "no budget has" in second
    assert (out / "cost_fidelity.png").stat().st_size > 0
    # another architecture set is refused, not mixed in
    assert pf.main([*common[:3], "20", *common[4:], "--budgets", "150:150:1:32:0.01"]) == 2
    assert "other architectures" in capsys.readouterr().err
