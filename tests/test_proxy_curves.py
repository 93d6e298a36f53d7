"""The training-curves proxy study: pairing, verdicts on curves with a known copula, the
report and the CLI; and (slow) the whole study on LEMUR's curves in ../shared/lemur."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from analysis import proxy_curves as pc
from analysis import proxy_curves_report as pr
from analysis.document import markdown
from analysis.claims import NOT_ENOUGH, NOT_SUPPORTED, SUPPORTED
from cem_nas.curves import CSV_COLUMNS, curves_dataset, read_curves
from experiments import proxy_study

N = 3000  # per group: the normal group's r_S - r (-0.018) is then ~4 bootstrap SEs from 0
RHO = 0.6  # the arcsin law's largest gap to rho_S = rho is near here
DRAWS = 400
REPO = Path(__file__).resolve().parents[1]
LEMUR = Path(os.environ.get("CEM_NAS_LEMUR_CURVES", REPO.parent / "shared" / "lemur" / "curves.csv.gz"))


def known_copula_records(n: int = N, seed: int = 0) -> pd.DataFrame:
    """Curves of three datasets whose (epoch 1, epoch 5) verdicts are known in advance.

    ``normal``: bivariate normal accuracies (affine in a latent normal, rho = 0.6).
    ``ceiling``: the same latent pairs, the target through a monotone saturating map
    (ranks identical to ``normal``; the median target is 0.98 of a 0.99 ceiling, Pearson
    0.45 instead of 0.6). ``floor``: the same pairs with both
    epochs clipped from below at their 40% quantile (runs that never learn share one value).
    Plus, per dataset, 5 runs cut short after epoch 1 and 3 without an epoch 1.
    """
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([0, 0], [[1, RHO], [RHO, 1]], n)
    x, y = 0.5 + 0.1 * z[:, 0], 0.5 + 0.1 * z[:, 1]
    ceiling = 0.1 + 0.89 / (1 + np.exp(-3 * (z[:, 1] + 1.5)))
    pairs = {"normal": (x, y), "ceiling": (x, ceiling),
             "floor": (np.maximum(x, np.quantile(x, 0.4)), np.maximum(y, np.quantile(y, 0.4)))}
    rows = []
    for name, (a, b) in pairs.items():
        for i in range(n):
            key = ("src", "img-classification", name, "acc", f"net{i % 50}", f"uid{i}")
            rows += [(*key, 1, a[i]), (*key, 2, (a[i] + b[i]) / 2), (*key, 5, b[i])]
        rows += [("src", "img-classification", name, "acc", "short", f"s{i}", 1, 0.1) for i in range(5)]
        rows += [("src", "img-classification", name, "acc", "late", f"l{i}", e, 0.2) for i in range(3) for e in (2, 5)]
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS)).assign(file="synthetic", line=0)


@pytest.fixture(scope="module")
def curves() -> xr.Dataset:
    return curves_dataset(known_copula_records())


@pytest.fixture(scope="module")
def study(curves) -> xr.Dataset:
    return pc.curve_study(curves, pc.CurveStudySettings(draws=DRAWS), progress=False)


def at(study, group, name, k=100):
    return study[name].sel(group=group, top_k=k).item()


def test_pairing_counts_every_configuration_by_reason(curves, study):
    pairs = pc.pair_epochs(curves)
    counts = pd.Series(pairs["pairing"].values).value_counts().to_dict()
    assert counts == {pc.PAIRED: 3 * N, pc.CUT_SHORT: 15, pc.NO_PROXY: 9}
    assert set(pairs["target_epoch"].values[pairs["pairing"].values == pc.PAIRED]) == {5}
    assert study["n_configurations"].values.tolist() == [N + 8] * 3
    assert study["n_cut_short"].values.tolist() == [5] * 3 and study["n_no_proxy"].values.tolist() == [3] * 3
    fixed = pc.pair_epochs(curves, 1, 3)  # stored epochs 1, 2, 5: epoch 3 was "thinned out"
    assert set(fixed["pairing"].values) == {pc.NO_TARGET, pc.CUT_SHORT, pc.NO_PROXY}
    same = pc.pair_epochs(curves, 1, 5)
    np.testing.assert_array_equal(same["target"].values, pairs["target"].values)


def test_bivariate_normal_supports_the_arcsin_law_and_the_normal_copula(study):
    assert at(study, "normal", "n") == N
    # the observed Spearman sits within 4 SEs (Bonett-Wright) of the arcsin image of the Pearson
    r, r_s = at(study, "normal", "pearson"), at(study, "normal", "spearman")
    se = np.sqrt((1 + r_s**2 / 2) / (N - 3)) * (1 - r_s**2)
    assert abs(r_s - 6 / np.pi * np.arcsin(r / 2)) < 4 * se
    assert abs(at(study, "normal", "gap")) < 4 * at(study, "normal", "gap_se")
    assert at(study, "normal", "identity_gap_hi") < 0  # rho_S = r is ruled out at this n
    assert at(study, "normal", "verdict_arcsin") == SUPPORTED
    assert at(study, "normal", "verdict_copula") == SUPPORTED
    for name in ("pearson", "spearman", "kendall", "gap", "copula_difference"):
        assert at(study, "normal", f"{name}_lo") < at(study, "normal", name) < at(study, "normal", f"{name}_hi")


def test_a_monotone_ceiling_keeps_the_ranks_moves_the_pearson_and_breaks_only_the_raw_law(study):
    for name in ("spearman", "kendall", "copula_difference", "copula_from_kendall"):
        assert at(study, "ceiling", name) == pytest.approx(at(study, "normal", name), abs=1e-12)
    moved = at(study, "normal", "pearson") - at(study, "ceiling", "pearson")
    assert moved > 10 * at(study, "normal", "pearson_se")
    assert at(study, "ceiling", "gap_lo") > 0
    assert at(study, "ceiling", "verdict_arcsin") == NOT_SUPPORTED
    assert at(study, "ceiling", "verdict_copula") == SUPPORTED


def test_a_tie_floor_is_measured_and_rejects_the_normal_copula(study):
    # 40% of both epochs sit at one value: the largest tie block is 40% up to one value
    for which in ("proxy", "target"):
        assert at(study, "floor", f"largest_tie_{which}") == pytest.approx(0.4, abs=2 / N)
        assert at(study, "floor", f"tied_share_{which}") == pytest.approx(0.4, abs=2 / N)
    assert at(study, "normal", "largest_tie_proxy") == 1 / N
    assert at(study, "floor", "copula_difference_hi") < 0
    assert at(study, "floor", "verdict_copula") == NOT_SUPPORTED


def test_ceiling_truncation_keeps_the_top_share_and_refits(study):
    for k in (50, 25):
        assert at(study, "normal", "n", k) == pytest.approx(N * k / 100, abs=1)
        # selecting on the target attenuates the correlation (range restriction)
        assert at(study, "normal", "pearson", k) < at(study, "normal", "pearson")
    # the floor group's tie block (the lowest 40%) is not split by a top-50% cut
    assert at(study, "floor", "largest_tie_target", 50) == 1 / at(study, "floor", "n", 50)


def test_verdict_needs_enough_pairs():
    settings = pc.CurveStudySettings(draws=200)
    rng = np.random.default_rng(7)
    z = rng.multivariate_normal([0, 0], [[1, RHO], [RHO, 1]], 20)
    st = pc.group_statistics(z[:, 0], z[:, 1], settings, rng)
    assert pc.arcsin_verdict(st, settings) == NOT_ENOUGH and pc.copula_verdict(st, settings) == NOT_ENOUGH
    z = rng.multivariate_normal([0, 0], [[1, RHO], [RHO, 1]], 200)
    st = pc.group_statistics(z[:, 0], z[:, 1], settings, rng)
    # 200 pairs cannot tell the law from rho_S = r, nor resolve the copula difference to +-0.005
    assert pc.arcsin_verdict(st, settings) == NOT_ENOUGH and pc.copula_verdict(st, settings) == NOT_ENOUGH
    assert st["pairs_to_resolve_gap"] > 0
    assert pc.group_statistics(np.ones(10), np.arange(10.0), settings, rng)["n"] == 10  # no spread: no statistics


def test_cluster_bootstrap_widens_intervals_for_repeated_architectures():
    # 300 architectures, each trained under 10 settings that all gave the same curve: the
    # pairs are 300 independent units, not 3,000, so the SE is sqrt(10) times the naive one
    rng = np.random.default_rng(8)
    z = rng.multivariate_normal([0, 0], [[1, RHO], [RHO, 1]], 300)
    rows = [("src", "img-classification", "d", "acc", f"net{i}", f"p{j}", e, 0.5 + 0.1 * z[i, int(e == 5)])
            for i in range(300) for j in range(10) for e in (1, 5)]
    curves = curves_dataset(pd.DataFrame(rows, columns=list(CSV_COLUMNS)).assign(file="synthetic", line=0))
    naive = pc.curve_study(curves, pc.CurveStudySettings(draws=400, top_k=(100,)), progress=False)
    clustered = pc.curve_study(curves, pc.CurveStudySettings(draws=400, top_k=(100,), cluster="nn"), progress=False)
    assert at(clustered, "d", "spearman") == at(naive, "d", "spearman")
    # 400 draws give each SE to ~3.5%
    assert at(clustered, "d", "spearman_se") / at(naive, "d", "spearman_se") == pytest.approx(np.sqrt(10), rel=0.15)
    assert at(clustered, "d", "kendall_se") / at(naive, "d", "kendall_se") == pytest.approx(np.sqrt(10), rel=0.15)
    assert pc.settings_of(clustered).cluster == "nn"


@pytest.mark.parametrize("kw, match", [({"target_epoch": "first"}, "target_epoch"), ({"target_epoch": 1}, "after"),
                                       ({"by": "colour"}, "by must be"), ({"cluster": "seed"}, "cluster must be"),
                                       ({"top_k": (0,)}, "top_k"), ({"draws": 10}, "draws")])
def test_settings_refuse_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        pc.CurveStudySettings(**kw)


def test_report_is_written_and_survives_a_netcdf_round_trip(study, tmp_path):
    path = pr.write_curves_report(study, tmp_path)
    text = path.read_text()
    assert "| normal: arcsin law on the raw Pearson | supported | n = 3,000: Spearman" in text
    assert "| ceiling: arcsin law on the raw Pearson | not supported |" in text
    assert "| floor: normal-copula reading | not supported |" in text
    assert "| floor | 25% | 750 |" in text
    html = (tmp_path / "proxy_curves.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and 'class="verdict v-not-supported"' in html
    for png in ("proxy_curves_hexbin.png", "proxy_curves_spearman.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    back = xr.load_dataset(tmp_path / "proxy_curves.nc")
    assert back["verdict_arcsin"].values.tolist() == study["verdict_arcsin"].values.tolist()
    assert back["nn"].values.tolist() == study["nn"].values.tolist()
    np.testing.assert_allclose(back["gap"].values, study["gap"].values)
    assert pc.settings_of(back) == pc.settings_of(study)
    assert pr.main([str(tmp_path / "proxy_curves.nc"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "proxy_curves.md").read_text() == text


def test_console_summary_and_figures_stay_readable_with_many_groups(study, monkeypatch, tmp_path):
    lines = pr.summary_lines(study)
    assert len(lines) == 4 and lines[3].startswith("normal ") and lines[3].endswith("supported / supported")
    counts = pr.summary_lines(study, max_groups=2)
    assert counts[0] == "3 groups (see the report for each):" and "1 supported" in counts[1]
    monkeypatch.setattr(pr, "MAX_PLOTTED", 2)
    assert [name for _, name in pr.plotted_groups(study)] == ["ceiling", "floor"]  # equal n: first two
    pr.plot_spearman_agreement(study, tmp_path / "s.png")
    assert "The figures show the 2 largest of the 3 groups." in markdown(pr.curves_document(study), tmp_path)


def test_cli_curves_mode(tmp_path, capsys):
    small = known_copula_records(n=300, seed=1).drop(columns=["file", "line"])
    path = tmp_path / "curves.csv"
    small.to_csv(path, index=False)
    out = tmp_path / "out"
    assert proxy_study.main(["--curves", str(path), "--out", str(out), "--bootstrap", "200", "--by", "none",
                             "--top-k", "100", "50", "--target-epoch", "5"]) == 0
    printed = capsys.readouterr().out
    assert "\nall " in printed and "written:" in printed
    study = xr.load_dataset(out / "proxy_curves.nc")
    assert study["group"].values.tolist() == ["all"] and study["top_k"].values.tolist() == [100, 50]
    assert study["n"].sel(top_k=100).values.tolist() == [900]
    assert proxy_study.main(["runs/x", "--curves", str(path)]) == 2
    assert proxy_study.main([]) == 2
    assert proxy_study.main(["--curves", str(path), "--target-epoch", "soon"]) == 2
    assert proxy_study.main(["--curves", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert "one of the two" in err and "'last' or an epoch number" in err and "no such file" in err


@pytest.mark.slow
@pytest.mark.skipif(not LEMUR.exists(), reason=f"LEMUR curves not at {LEMUR} (set CEM_NAS_LEMUR_CURVES)")
def test_lemur_curves_study(tmp_path):
    """The real file: the reader agrees with a plain pandas reading, the study with scipy."""
    curves = read_curves(LEMUR)
    raw = pd.read_csv(LEMUR)
    keys = ["task", "dataset", "metric", "nn", "prm_id"]
    assert curves.attrs["records"] == len(raw) and curves.sizes["configuration"] == raw.groupby(keys).ngroups
    study = pc.curve_study(curves, pc.CurveStudySettings(draws=200), progress=False)
    # an independent pairing: epoch 1 against the configuration's last stored epoch, when later
    last = raw.loc[raw.groupby(keys)["epoch"].idxmax()].set_index(keys)
    first = raw[raw["epoch"] == 1].set_index(keys)["accuracy"]
    both = last[last["epoch"] > 1].join(first.rename("proxy"), how="inner")
    assert sorted(study["group"].values.tolist()) == sorted(both.index.get_level_values("dataset").unique())
    for name, g in both.groupby(level="dataset"):
        assert at(study, name, "n") == len(g)
        assert at(study, name, "spearman") == pytest.approx(stats.spearmanr(g["proxy"], g["accuracy"]).statistic)
        assert at(study, name, "kendall") == pytest.approx(stats.kendalltau(g["proxy"], g["accuracy"]).statistic)
        assert at(study, name, "pearson") == pytest.approx(np.corrcoef(g["proxy"], g["accuracy"])[0, 1])
    assert set(study["verdict_arcsin"].values.ravel()) <= {SUPPORTED, NOT_SUPPORTED, NOT_ENOUGH}
    # svhn's never-learning runs: more than half of its targets sit at one accuracy
    assert at(study, "svhn", "largest_tie_target") > 0.5
    assert "svhn" in pr.write_curves_report(study, tmp_path).read_text()
