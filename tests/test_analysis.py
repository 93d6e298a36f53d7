"""The report's verdicts on synthetic stores whose truth is known.

Synthetic runs are genuine sampled cross-entropy processes over a finite set of
architectures with mixture smoothing ``pi_{t+1} = alpha q_t + (1 - alpha) pi_t``, written
through the loop's own instrumentation hook and store, so they have the real schema.
When every elite lies in E (q_t(E) = 1) the law 1 - pi_{t+1}(E) = (1 - alpha)(1 - pi_t(E))
holds exactly and the fitted rate must be 1 - alpha; when E is rarer than the elite
fraction early on, q_t(E) < 1 and the report must not call the process geometric.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import xarray as xr

from analysis import claims as cl
from analysis import summaries as sm
from analysis.load import as_runs, load, load_grid
from analysis.report import main as report_main
from analysis.report import write_report
from cem_nas.hooks import Instrumentation
from cem_nas.records import Candidate, CycleRecord, EvalResult, UpdateStats
from cem_nas.store import RunStore, cycle_dataset
from theory import cem


def sampled_cem_run(root, *, alpha=0.3, cycles=8, n=400, n_arch=40, elite_fraction=0.1,
                    e_share=0.25, p0_e=None, noise=0.0, replicated=0, mode="delta", seed=0,
                    gamma_path=None, name=None):
    """Write a run directory of a sampled mixture-smoothed CE process; return its path.

    Architecture i has quality i / n_arch; E is the top ``e_share`` of architectures
    (gamma_ref on the quality scale). pi_0 puts mass ``p0_e`` on E (default e_share).
    Scores are quality + N(0, noise^2); the first ``replicated`` candidates of a cycle
    get a second proxy run. ``gamma_path`` overrides the elite threshold per cycle.
    """
    rng = np.random.default_rng(seed)
    quality = np.arange(n_arch) / n_arch
    in_e = quality >= 1 - e_share
    gamma_ref = float(quality[in_e].min()) - 1e-9
    p0_e = e_share if p0_e is None else p0_e
    pi = np.where(in_e, p0_e / in_e.sum(), (1 - p0_e) / (~in_e).sum())
    store = RunStore(root)
    config = f'[run]\nname = "{name or root.name}"\nmode = "{mode}"\nseed = {seed}\n' \
             f'[cem]\nelite_fraction = {elite_fraction}\nnovelty_threshold = 0.9\n'
    store.create(config, overwrite=True)
    hook = Instrumentation(gamma_ref=gamma_ref if noise == 0 else math.nan, mode=mode)
    n_elite = max(1, int(round(elite_fraction * n)))
    for t in range(cycles):
        arch = rng.choice(n_arch, size=n, p=pi)
        reps = 2 if replicated else 1
        acc = quality[arch][:, None] + noise * rng.standard_normal((n, reps))
        order = np.argsort(-acc[:, 0], kind="stable")
        elite = np.zeros(n, bool)
        elite[order[:n_elite]] = True
        gamma = float(acc[order[n_elite - 1], 0]) if gamma_path is None else float(gamma_path[t])
        cands = []
        for i in range(n):
            k = reps if i < replicated else 1
            results = [EvalResult("ok", accuracy=float(acc[i, j]), seed=j) for j in range(k)]
            lines = 12 if mode == "delta" else 80
            cands.append(Candidate(cand=i, baseline="zoo", parent_cycle=-1, response=f"arch {arch[i]}",
                                   delta=f"arch {arch[i]}" if mode == "delta" else "",
                                   code=f"arch {arch[i]}", status="ok", results=results,
                                   completion_tokens=lines * 8, gen_seconds=0.01, delta_lines=lines,
                                   code_lines=80, is_elite=bool(elite[i])))
        record = CycleRecord(cycle=t, candidates=cands, gamma=gamma, update=UpdateStats(),
                             seconds={}, baselines=["zoo"], alpha=alpha, replicates=reps)
        values = hook.after_cycle(record)
        attrs = {"run_name": name or root.name, "sampler": "synthetic", "mode": mode, "seed": seed, "config": config}
        store.write_cycle(cycle_dataset(record, values, hook.variables, attrs))
        store.save_state({"cycles_done": t + 1})
        q = np.bincount(arch[elite], minlength=n_arch) / n_elite
        pi = alpha * q + (1 - alpha) * pi
    return root


# ----------------------------------------------------------------------- verdicts


@pytest.fixture(scope="module")
def geometric_run(tmp_path_factory):
    return sampled_cem_run(tmp_path_factory.mktemp("geo") / "geo", alpha=0.3, n_arch=200, seed=1)


def test_geometric_process_is_called_geometric_with_the_right_rate(geometric_run):
    runs = as_runs(load(geometric_run))
    assert float(runs["q_E"].min()) == 1.0  # the construction keeps every elite in E
    claim = cl.geometric_convergence(runs)
    assert claim.verdict == cl.SUPPORTED, claim.summary
    (lo, hi), = claim.numbers["kappa_ci"]
    assert lo <= 0.7 <= hi
    # a rate fitted on ~7 cycles of 400 draws is within a few hundredths of 1 - alpha
    assert abs(claim.numbers["kappa"][0] - 0.7) < 3 * (hi - lo) / (2 * 1.96)
    assert cl.smoothing_identity(runs).verdict == cl.SUPPORTED


def test_rare_elite_set_with_q_below_one_is_not_called_geometric(tmp_path):
    # E = top 5% of architectures with pi_0(E) = 0.02 < elite fraction 0.2: early elites fall outside E
    run = sampled_cem_run(tmp_path / "rare", alpha=0.3, e_share=0.05, p0_e=0.02, elite_fraction=0.2, cycles=6, seed=2)
    runs = as_runs(load(run))
    assert float(runs["q_E"].min()) < 1
    claim = cl.geometric_convergence(runs)
    assert claim.verdict == cl.NOT_SUPPORTED
    assert "not purely geometric" in claim.summary
    # the smoothing identity, unlike the pure law, still holds for this process
    assert cl.smoothing_identity(runs).verdict == cl.SUPPORTED


def test_wrong_alpha_is_caught_by_the_rate_ci(geometric_run):
    # the store claims alpha = 0.6 but the process moved with 0.3: kappa CI must miss 0.4
    ds = load(geometric_run)
    ds["alpha"] = ds["alpha"] * 0 + 0.6
    claim = cl.geometric_convergence(as_runs(ds))
    assert claim.verdict == cl.NOT_SUPPORTED and "miss 1 - alpha" in claim.summary


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    return sampled_cem_run(tmp_path_factory.mktemp("noisy") / "noisy", noise=0.05, replicated=100,
                           cycles=6, n=200, seed=5)


def test_rising_threshold_is_supported_and_a_fall_is_flagged(geometric_run):
    ds = load(geometric_run)
    claim = cl.monotone_threshold(as_runs(ds))
    assert claim.verdict == cl.SUPPORTED, claim.summary
    ds["gamma"].values[:] = [0.5, 0.6, 0.7, 0.8, 0.3, 0.85, 0.9, 0.92]  # a drop of 0.5 into cycle 4
    claim = cl.monotone_threshold(as_runs(ds))
    assert claim.verdict == cl.NOT_SUPPORTED
    assert "not monotone" in claim.summary and "cycle 4" in claim.summary


def test_sampling_noise_in_the_quantile_is_not_called_a_fall(noisy_run):
    ds = load(noisy_run)
    se = cl.threshold_standard_errors(as_runs(ds), 0)
    assert np.all(se > 0.003)  # proxy noise 0.05 over 200 scores: the 0.9 quantile moves by ~0.01
    # a dip of 0.002 is far inside the Bonferroni z (~2.6) bootstrap SEs; a dip of 0.2 far outside
    ds["gamma"].values[:] = [0.60, 0.65, 0.70, 0.698, 0.75, 0.80]
    claim = cl.monotone_threshold(as_runs(ds))
    assert claim.numbers["significant_falls"] == 0 and claim.verdict == cl.SUPPORTED, claim.summary
    ds["gamma"].values[:] = [0.60, 0.65, 0.70, 0.50, 0.75, 0.80]
    assert cl.monotone_threshold(as_runs(ds)).numbers["significant_falls"] == 1


def test_page_test_across_replicate_runs(tmp_path):
    dirs = [sampled_cem_run(tmp_path / f"r{s}", seed=10 + s, cycles=4, n=60, n_arch=200) for s in range(3)]
    claim = cl.monotone_threshold(as_runs(load(dirs)))
    assert "page_p" in claim.numbers and claim.numbers["page_p"] < 0.05
    assert claim.verdict == cl.SUPPORTED


def test_too_few_cycles_is_not_enough_data(tmp_path):
    runs = as_runs(load(sampled_cem_run(tmp_path / "short", cycles=2, n=50, seed=6)))
    assert cl.monotone_threshold(runs).verdict == cl.NOT_ENOUGH
    assert cl.geometric_convergence(runs).verdict == cl.NOT_ENOUGH


# ----------------------------------------------------------------------- pooled reliability


def retest_dataset(n_arch, icc, seed, runs=3):
    """rep_score for n_arch architectures split over runs and cycles, with a known ICC(1)."""
    rng = np.random.default_rng(seed)
    per = n_arch // runs
    true = rng.standard_normal((runs, 1, per, 1)) * math.sqrt(icc)
    rep = true + rng.standard_normal((runs, 1, per, 2)) * math.sqrt(1 - icc)
    status = np.full((runs, 1, per), "ok", dtype=object)
    return xr.Dataset({"rep_score": (("run", "cycle", "cand", "rep"), rep),
                       "status": (("run", "cycle", "cand"), status)},
                      coords={"run": [f"r{i}" for i in range(runs)], "cycle": [0]})


def test_pooled_reliability_on_3300_architectures_is_fast_and_counts_them():
    ds = retest_dataset(3300, icc=0.6, seed=7)
    start = time.perf_counter()
    claim = cl.proxy_reliability(ds)
    assert time.perf_counter() - start < 5
    assert claim.numbers["n_architectures"] == 3300 and claim.numbers["n_pairs"] == 3300
    # consistent with the law, but 3,300 pairs cannot tell it from rho_S = rho (needs ~1e4)
    assert claim.verdict == cl.NOT_ENOUGH and "3300 architectures" in claim.summary
    assert claim.numbers["pairs_needed"] > 3300
    lo, hi = claim.numbers["spearman_ci"]
    assert lo <= claim.numbers["moran_expectation"] <= hi


def test_arcsin_law_supported_with_enough_pairs():
    ds = retest_dataset(15000, icc=0.594, seed=8)
    claim = cl.proxy_reliability(ds)
    assert claim.numbers["pairs_needed"] < 15000
    assert claim.verdict == cl.SUPPORTED, claim.summary


def test_non_normal_dependence_contradicts_the_arcsin_law():
    # replicate 1 = replicate 0 except for 3% wild outliers: ranks agree almost perfectly,
    # the Pearson/ICC collapses, so the arcsin prediction from the ICC is far too low
    rng = np.random.default_rng(9)
    ds = retest_dataset(3000, icc=0.95, seed=9)
    rep = ds["rep_score"].values
    wild = rng.random(rep.shape[:3]) < 0.03
    rep[..., 1] = np.where(wild, rep[..., 1] + 200 * rng.standard_normal(rep.shape[:3]), rep[..., 1])
    claim = cl.proxy_reliability(ds)
    assert claim.verdict == cl.NOT_SUPPORTED, claim.summary


def test_reliability_without_replicates_is_not_enough_data(geometric_run):
    claim = cl.proxy_reliability(as_runs(load(geometric_run)))
    assert claim.verdict == cl.NOT_ENOUGH


# ----------------------------------------------------------------------- delta vs full


def test_delta_vs_full_table_and_verdict(tmp_path):
    delta = sampled_cem_run(tmp_path / "d", mode="delta", cycles=3, n=200, seed=11)
    full = sampled_cem_run(tmp_path / "f", mode="full", cycles=3, n=200, seed=12)
    ds = load([delta, full])
    # make full generation fail 40% of the time
    status = ds["status"].values
    mask = (ds["mode"].values == "full")[:, None, None] & (np.random.default_rng(0).random(status.shape) < 0.4)
    status[mask] = "apply_error"
    runs = as_runs(ds)
    table = cl.generation_table(runs)
    assert table["delta"]["proposals"] == table["full"]["proposals"] == 600
    assert table["delta"]["valid_rate"] == 1.0
    assert abs(table["full"]["valid_rate"] - 0.6) < 3 * math.sqrt(0.24 / 600)
    assert table["full"]["valid_lo"] < table["full"]["valid_rate"] < table["full"]["valid_hi"]
    assert table["delta"]["lines_per_proposal"] == 12 and table["full"]["lines_per_proposal"] == 80
    claim = cl.delta_vs_full(runs)
    assert claim.verdict == cl.SUPPORTED and claim.numbers["diff_ci"][0] > 0
    assert abs(claim.numbers["shorter"] - (1 - 12 / 80)) < 1e-9


# ----------------------------------------------------------------------- the report


def test_report_writes_plots_and_a_verdict_per_claim(noisy_run, tmp_path):
    out = tmp_path / "rep"
    assert report_main([str(noisy_run), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    sections = {part.split("\n", 1)[0]: part for part in text.split("\n### ")[1:]}
    for claim in cl.all_claims(as_runs(load(noisy_run))):
        body = sections[claim.title].split("\n## ", 1)[0]
        assert f"**Verdict: {claim.verdict}** - " in body, claim.title
    assert text.count("**Verdict: ") == 5
    # a store from before search.duplicates: its p_t(E) is the reject reading, the inherit one unavailable
    assert "use the reject (store predates search.duplicates) reading" in text and "unavailable" in text
    for png in ("threshold", "elite_probability", "smoothing", "status", "reliability"):
        data = (out / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png


def test_ablation_grid_report_has_heatmaps(geometric_run, tmp_path):
    # four cells made from one run: each cell's best is shifted by a known amount
    run = load(geometric_run)
    shift = {(0.1, 0.8): 0.0, (0.1, 0.95): -0.1, (0.3, 0.8): -0.2, (0.3, 0.95): -0.3}
    cells = {(ef, nt, 0): run.assign(best_so_far=run["best_so_far"] + d) for (ef, nt), d in shift.items()}
    cells[(0.3, 0.95, 1)] = cells.pop((0.3, 0.95, 0))  # one cell ran with seed 1 only
    grid = load_grid(cells)
    assert dict(grid.sizes)["elite_fraction"] == 2 and dict(grid.sizes)["seed"] == 2
    path = tmp_path / "grid.nc"
    grid.to_netcdf(path)
    summary = sm.ablation_summary(grid)
    final = float(run["best_so_far"][-1])
    for (ef, nt), d in shift.items():
        cell = summary.sel(elite_fraction=ef, novelty_threshold=nt)
        assert float(cell["final_best"]) == pytest.approx(final + d)
        assert int(cell["n_seeds"]) == 1  # the missing seed is padding, not a run
    report = write_report([path], tmp_path / "out")
    text = report.read_text()
    assert "## Ablation" in text and "Runs: 4;" in text
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 5000


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


# ----------------------------------------------------------------------- exact CE (theory.cem)


def store_view(sim: xr.Dataset, name: str) -> xr.Dataset:
    """A theory.cem simulation as the store's cycle variables (no candidates: exact)."""
    p, q, alpha = sim["p_E"].values, sim["q_E"].values, float(sim.attrs["alpha"])
    residual = np.full(p.shape, np.nan)
    residual[1:] = cem.identity_residual(p[:-1], q[:-1], p[1:], alpha)
    data = {"gamma": sim["gamma"].values, "p_E": p, "q_E": q, "alpha": np.full(p.shape, alpha),
            "smoothing_residual": residual, "best_so_far": np.maximum.accumulate(sim["best"].values)}
    if "neutral_diversity" in sim:
        data["neutral_diversity"] = sim["neutral_diversity"].values
    return xr.Dataset({k: ("cycle", v) for k, v in data.items()},
                      coords={"cycle": sim["iteration"].values}, attrs={"run_name": name})


def test_exact_noise_free_ce_is_geometric_at_exactly_one_minus_alpha():
    sim = cem.simulate_categorical_exact(np.arange(20.0), alpha=0.25, rho=0.1, iterations=12)
    runs = as_runs(store_view(sim, "exact"))
    claim = cl.geometric_convergence(runs)
    assert claim.verdict == cl.SUPPORTED, claim.summary
    assert claim.numbers["kappa"][0] == pytest.approx(0.75, abs=1e-9)
    assert cl.smoothing_identity(runs).numbers["max_abs_residual"] < 1e-12
    assert cl.monotone_threshold(runs).verdict == cl.SUPPORTED


def test_exact_noisy_ce_has_q_below_one_and_is_not_called_geometric():
    sim = cem.simulate_categorical_exact(np.arange(20.0), alpha=0.25, rho=0.1, iterations=12, snr=1.0)
    runs = as_runs(store_view(sim, "noisy"))
    assert float(runs["q_E"].min()) < 1
    claim = cl.geometric_convergence(runs)
    assert claim.verdict == cl.NOT_SUPPORTED and "not purely geometric" in claim.summary
    assert cl.smoothing_identity(runs).verdict == cl.SUPPORTED  # the identity holds regardless


def test_pbil_neutral_drift_refutes_convergence_as_optimality(tmp_path):
    sim = cem.simulate_pbil([[0.0, 1.0, 2.0]] * 3, alpha=0.5, rho=0.2, iterations=30, n_samples=20, seed=3)
    view = store_view(sim, "pbil")
    claim = cl.optimality(as_runs(view))
    assert claim.verdict == cl.NOT_SUPPORTED and "neutral" in claim.summary
    # the report also works on a store without candidates
    path = tmp_path / "pbil.nc"
    view.to_netcdf(path)
    text = write_report([path], tmp_path / "out").read_text()
    assert text.count("**Verdict: ") == 5 and "no candidates" in text


def test_optimality_without_a_neutral_coordinate_measured_is_not_enough_data():
    """An LLM run stores neutral_diversity as all NaN: no drift measured, and no warning."""
    import warnings

    sim = cem.simulate_pbil([[0.0, 1.0, 2.0]] * 3, alpha=0.5, rho=0.2, iterations=5, n_samples=20, seed=3)
    view = store_view(sim, "llm-like")
    view["neutral_diversity"] = view["neutral_diversity"] * np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        claim = cl.optimality(as_runs(view))
    assert claim.verdict == cl.NOT_ENOUGH and "no neutral-coordinate drift measured" in claim.summary


def test_implied_alpha_is_not_used_as_the_known_step(geometric_run):
    # an LLM store: no residual, the alpha column holds the implied step
    ds = load(geometric_run)
    ds["smoothing_residual"] = ds["smoothing_residual"] * np.nan
    ds["alpha"] = ds["alpha"] * 0 + 0.9
    runs = as_runs(ds)
    claim = cl.geometric_convergence(runs)
    assert claim.verdict == cl.SUPPORTED and "alpha unknown" in claim.summary
    assert np.isnan(claim.numbers["one_minus_alpha"][0])
    assert cl.smoothing_identity(runs).verdict == cl.NOT_ENOUGH


def test_a_failed_identity_says_why_for_the_sampler_that_ran(geometric_run):
    runs = as_runs(load(geometric_run))
    broken = runs.assign(smoothing_residual=runs["smoothing_residual"] + 0.5)
    for kind, says, not_says in (("llm", "adapter's parameters", "PBIL"), ("grammar", "PBIL", "adapter")):
        claim = cl.smoothing_identity(broken.assign_coords(sampler=("run", [kind] * broken.sizes["run"])))
        assert claim.verdict == cl.NOT_SUPPORTED
        assert says in claim.summary and not_says not in claim.summary


def test_four_retest_pairs_give_a_report_without_the_intervals_they_cannot_have():
    # the tiny ablation of test_experiments: 4 replicated candidates, too few for Kendall's
    # Fisher-z interval (n > 4) but enough for Spearman's (n > 3)
    pooled = cl.pooled_reliability(retest_dataset(4, icc=0.8, seed=3, runs=1))
    assert pooled.n_pairs == 4 and all(np.isfinite(pooled.spearman_ci))
    assert all(np.isnan(pooled.kendall_ci))
    assert cl.proxy_reliability(retest_dataset(4, icc=0.8, seed=3, runs=1)).verdict == cl.NOT_ENOUGH
