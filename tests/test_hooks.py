"""Instrumentation hook: values agree with theory/ and numpy recomputed by hand."""
import math

import numpy as np
import pytest
from scipy import stats

from cem_nas.hooks import Hook, Instrumentation, load_user_hook, retest_correlations
from cem_nas.records import STATUSES, Candidate, CycleRecord, EvalResult, UpdateStats
from theory import proxy, reliability
from theory.convergence import wilson_interval


def make_record(cycle, scores, reps=None, statuses=None, elite_fraction=0.25, alpha=math.nan, replicates=2):
    """A CycleRecord from scores (NaN = failed with a non-scored status) and replicate rows."""
    cands = []
    for i, s in enumerate(scores):
        status = (statuses or {}).get(i, "ok" if np.isfinite(s) else "build_error")
        results = [EvalResult(status, accuracy=s if np.isfinite(s) else math.nan, params=100 + i, seed=0)]
        if status != "build_error" and reps is not None and i in reps:
            results += [EvalResult("ok", accuracy=a, seed=j + 1) for j, a in enumerate(reps[i])]
        if status in ("duplicate", "parse_error"):
            results = []
        cands.append(Candidate(cand=i, baseline="mlp", parent_cycle=-1, status=status, results=results,
                               completion_tokens=10 + i, delta="x", delta_lines=5 + i, is_new=bool(results)))
    valid = sorted((c for c in cands if c.status == "ok"), key=lambda c: (-c.score, c.cand))
    elites = valid[:max(1, math.ceil(elite_fraction * len(valid)))] if valid else []
    for c in elites:
        c.is_elite = True
    return CycleRecord(cycle=cycle, candidates=cands, gamma=elites[-1].score if elites else math.nan,
                       update=UpdateStats(1.0, 0.5, 2.0, 1.5), seconds={"sample": 1.0, "evaluate": 2.0},
                       baselines=["mlp"], alpha=alpha, replicates=replicates)


def test_elite_probability_and_threshold():
    rng = np.random.default_rng(0)
    scores0 = rng.uniform(0.2, 0.9, 20)
    scores0[[3, 7]] = np.nan
    hook = Instrumentation()
    r0 = make_record(0, scores0)
    v0 = hook.after_cycle(r0)
    gamma0 = r0.gamma
    assert v0["gamma_ref"] == gamma0
    k = int(np.sum(np.nan_to_num(scores0, nan=-1) >= gamma0))
    assert v0["p_E"] == k / 20  # the share of ALL proposals, failed ones included
    assert (v0["p_E_lo"], v0["p_E_hi"]) == pytest.approx(wilson_interval(k, 20, 0.95))
    assert v0["q_E"] == 1.0  # cycle 0 defines E by its own elite threshold
    assert v0["valid_rate"] == 18 / 20 and v0["n_elite"] == math.ceil(0.25 * 18)
    scores1 = rng.uniform(0.3, 1.0, 20)
    v1 = hook.after_cycle(make_record(1, scores1))
    assert v1["gamma_ref"] == gamma0  # frozen
    assert v1["p_E"] == np.mean(scores1 >= gamma0)
    assert v1["best_so_far"] == max(np.nanmax(scores0), scores1.max())


def test_smoothing_residual_with_known_alpha_and_implied_alpha():
    s0 = np.linspace(0.1, 0.9, 10)
    s1 = np.linspace(0.3, 0.95, 10)
    for alpha in (0.6, math.nan):
        hook = Instrumentation(gamma_ref=0.7)
        v0 = hook.after_cycle(make_record(0, s0, elite_fraction=0.5, alpha=alpha))
        v1 = hook.after_cycle(make_record(1, s1, elite_fraction=0.5, alpha=alpha))
        p0, q0, p1 = v0["p_E"], v0["q_E"], v1["p_E"]
        assert math.isnan(v0["smoothing_residual"])  # no previous cycle yet
        if math.isfinite(alpha):
            assert v1["alpha"] == alpha
            assert v1["smoothing_residual"] == pytest.approx((1 - p1) - (alpha * (1 - q0) + (1 - alpha) * (1 - p0)))
        else:
            implied = ((1 - p1) - (1 - p0)) / ((1 - q0) - (1 - p0))
            assert v1["alpha"] == pytest.approx(implied) and math.isnan(v1["smoothing_residual"])
            # the implied alpha makes the identity exact
            assert (1 - p1) == pytest.approx(implied * (1 - q0) + (1 - implied) * (1 - p0))


def test_replicate_statistics_match_theory():
    rng = np.random.default_rng(1)
    true = rng.normal(0.6, 0.1, 12)
    rep0 = true + rng.normal(0, 0.05, 12)
    rep1 = true + rng.normal(0, 0.05, 12)
    record = make_record(0, rep0, reps={i: [rep1[i]] for i in range(12)})
    v = Instrumentation().after_cycle(record)
    icc = reliability.icc1(np.column_stack([rep0, rep1]))
    assert (v["icc"], v["snr"], v["icc_lo"], v["snr_hi"]) == pytest.approx((icc.icc, icc.snr, icc.ci_low, icc.snr_ci_high))
    r = np.corrcoef(rep0, rep1)[0, 1]
    r_s = stats.spearmanr(rep0, rep1).statistic
    tau = stats.kendalltau(rep0, rep1).statistic
    assert (v["retest_pearson"], v["retest_spearman"], v["retest_kendall"]) == pytest.approx((r, r_s, tau))
    assert (v["retest_spearman_lo"], v["retest_spearman_hi"]) == pytest.approx(proxy.spearman_ci(r_s, 12))
    assert (v["retest_kendall_lo"], v["retest_kendall_hi"]) == pytest.approx(proxy.kendall_ci(tau, 12))
    assert v["spearman_arcsin_pred"] == pytest.approx(proxy.spearman_from_pearson(r))
    assert v["spearman_moran_expected"] == pytest.approx(proxy.moran_expected_spearman(r, 12))
    assert v["copula_from_kendall"] == pytest.approx(math.sin(math.pi * tau / 2))
    assert v["n_rep_arch"] == 12


def test_too_little_data_gives_nan_not_an_error():
    # one valid candidate, no replicates, everything else failed
    v = Instrumentation().after_cycle(make_record(0, [0.5, math.nan, math.nan], replicates=1))
    for name in ("icc", "snr", "retest_pearson", "retest_kendall_lo", "spearman_moran_expected"):
        assert math.isnan(v[name])
    assert v["score_median"] == 0.5
    # no valid candidate at all
    v = Instrumentation().after_cycle(make_record(0, [math.nan, math.nan]))
    assert math.isnan(v["gamma_ref"]) and v["p_E"] == 0.0 and math.isnan(v["q_E"]) and math.isnan(v["score_mean"])
    assert math.isnan(v["chance_share"])  # nothing trained
    # three replicate pairs: correlations, but no Fisher-z interval (needs n > 3)
    v = Instrumentation().after_cycle(make_record(0, [0.5, 0.6, 0.7], reps={0: [0.52], 1: [0.58], 2: [0.75]}))
    assert math.isfinite(v["retest_pearson"]) and math.isnan(v["retest_pearson_lo"])


def test_rates_sizes_and_state_round_trip():
    statuses = {0: "duplicate", 1: "parse_error", 2: "low_accuracy"}
    rec = make_record(0, [math.nan, math.nan, 0.11, 0.5, 0.6], statuses=statuses)
    hook = Instrumentation(mode="delta")
    v = hook.after_cycle(rec)
    assert v["duplicate_rate"] == 1 / 5 and v["valid_rate"] == 2 / 5
    # 3 trained (one low_accuracy); the duplicate and the parse error are not in the share
    assert v["chance_share"] == 1 / 3
    assert (v["chance_share_lo"], v["chance_share_hi"]) == pytest.approx(wilson_interval(1, 3, 0.95))
    assert v["tokens_per_proposal"] == np.mean([10, 11, 12, 13, 14])
    assert v["lines_per_proposal"] == np.mean([5, 6, 7, 8, 9])
    assert v["seconds_sample"] == 1.0 and math.isnan(v["seconds_update"])
    assert v["in_E"].tolist() == [False, False, False, False, True]
    clone = Instrumentation()
    clone.load_state_dict(hook.state_dict())
    rec1 = make_record(1, [0.7, 0.4])
    assert clone.after_cycle(rec1)["p_E"] == hook.after_cycle(rec1)["p_E"] == 0.5


def test_retest_needs_two_replicates():
    assert all(math.isnan(x) for x in retest_correlations(np.ones((5, 1)), 0.95).values())


class CountingHook(Hook):
    variables = {"n_ok": ("count", "ok candidates")}

    def after_cycle(self, record):
        return {"n_ok": float(sum(c.status == "ok" for c in record.candidates))}


def test_user_hook_by_import_path():
    hook = load_user_hook("test_hooks:CountingHook")
    assert hook.after_cycle(make_record(0, [0.5, math.nan]))["n_ok"] == 1.0
    with pytest.raises(ValueError, match="cannot load 'nowhere.mod:X'"):
        load_user_hook("nowhere.mod:X")
    assert len(STATUSES) == len(set(STATUSES))


def test_repeats_in_both_readings_and_not_in_the_share_at_chance():
    rec = make_record(0, [0.5, 0.9, 0.11, math.nan], statuses={2: "low_accuracy"}, elite_fraction=0.5)
    twin = rec.candidates[1]
    ok_repeat = Candidate(cand=4, baseline="mlp", parent_cycle=-1, status="ok", twin="c0000_001",
                          results=[twin.results[0]], inherited=twin.results[0])
    rejected = Candidate(cand=5, baseline="mlp", parent_cycle=-1, status="duplicate", twin="c0000_001",
                         inherited=twin.results[0])
    low = rec.candidates[2].results[0]
    chance_repeat = Candidate(cand=6, baseline="mlp", parent_cycle=-1, status="low_accuracy", twin="c0000_002",
                              results=[low], inherited=low)
    rec.candidates += [ok_repeat, rejected, chance_repeat]
    v = Instrumentation(gamma_ref=0.9).after_cycle(rec)
    # E = {score >= 0.9}: the twin, the inherited repeat, and in the inherit reading the rejected one too
    assert (v["p_E"], v["p_E_inherit"], v["p_E_reject"]) == (2 / 7, 3 / 7, 1 / 7)
    assert (v["repeat_rate"], v["new_share"], v["novel_valid_yield"]) == (3 / 7, 4 / 7, 2 / 7)  # a build_error is new
    assert v["chance_share"] == 1 / 3  # the repeat at chance was not trained again
    assert ok_repeat.score_source == "archive" and twin.score_source == "proxy" and rejected.score_source == ""
