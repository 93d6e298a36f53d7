"""The papers' protocol: the command end to end with the grammar sampler (and with the
embedded LLM, slow), resume after an interruption, the report's numbers against hand
computations on a small fake store, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis import paper_table as pt
from analysis.load import load
from cem_nas import preflight
from cem_nas.hooks import Instrumentation
from cem_nas.records import Candidate, CycleRecord, EvalResult, UpdateStats
from cem_nas.store import RunStore, cycle_dataset
from experiments import ablate
from experiments import paper_protocol as pp

#: A tiny protocol on the grammar sampler: one baseline, small data, seconds a run.
TINY = ["--sampler", "grammar", "--models", "smollm2", "--baselines", "mlp", "--max-train", "200",
        "--max-test", "100", "--candidates", "4", "--progress", "false"]

Z = stats.norm.ppf(0.975)


def test_the_protocol_runs_resumes_a_shorter_run_and_reports(tmp_path, capsys):
    assert pp.main(TINY + ["--cycles", "1", "--out", str(tmp_path)]) == 0
    first = (tmp_path / "smollm2-delta" / "cycles" / "cycle_0000.nc").read_bytes()
    capsys.readouterr()
    # a run directory with fewer cycles done continues from its last complete cycle
    assert pp.main(TINY + ["--cycles", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("resumed at cycle 1") == 2 and "continuing at cycle 1 of 2" in out
    for mode in ("delta", "full"):
        run = load(tmp_path / f"smollm2-{mode}")
        assert run.attrs["mode"] == mode and run.sizes["cycle"] == 2 and int(run.n_cand.sum()) == 8
    assert (tmp_path / "smollm2-delta" / "cycles" / "cycle_0000.nc").read_bytes() == first
    report = (tmp_path / "report.md").read_text()
    assert report in out
    for heading in ("## Seed claims", "## Generation per LLM and mode", "## Delta / full validity ratio",
                    "## Convergence claims per run", "## The arcsin law", "## Wall time per phase",
                    "## Projected time of the full size (22 x 50 per run)"):
        assert heading in report
    assert "| ours | smollm2 | delta | 8 |" in report and "| seed 001 | DeepSeek-Coder-7B | delta |" in report
    assert "2 of the full protocol's 6 runs" in report and "qwen2.5-coder-1.5b-full" in report
    # finished runs are skipped; the report can be rebuilt without running
    assert pp.main(TINY + ["--cycles", "2", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count(": complete") == 2
    assert pp.main(TINY + ["--cycles", "2", "--out", str(tmp_path), "--report-only"]) == 0
    # one LLM per command: the report still covers every run under OUT
    other = [a if a != "smollm2" else "qwen2.5-coder-0.5b" for a in TINY]
    assert pp.main(other + ["--cycles", "1", "--modes", "delta", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| ours | smollm2 | delta | 8 |" in report and "| ours | qwen2.5-coder-0.5b | delta | 4 |" in report
    assert "3 of the full protocol's 6 runs" in report


def test_an_interrupted_protocol_continues_where_it_stopped(tmp_path, monkeypatch, capsys):
    real = ablate.run_search

    def killed_in_full(cfg, resume_dir=None):
        if cfg.run.name.endswith("full"):
            raise KeyboardInterrupt
        return real(cfg, resume_dir)

    monkeypatch.setattr(ablate, "run_search", killed_in_full)
    argv = TINY + ["--cycles", "1", "--out", str(tmp_path)]
    assert pp.main(argv) == 130
    assert "Rerun the same command to continue" in capsys.readouterr().err
    monkeypatch.setattr(ablate, "run_search", real)
    assert pp.main(argv) == 0
    out = capsys.readouterr().out
    assert "smollm2-delta: complete" in out and "smollm2-full: ran" in out


def test_each_run_gets_its_model_mode_name_and_the_protocol_size(tmp_path):
    args = pp.parser().parse_args(["--models", "deepseek-ai/deepseek-coder-6.7b-instruct", "--out", str(tmp_path)])
    cfg = pp.cell_config(pp.base_config(args), tmp_path, "deepseek-ai/deepseek-coder-6.7b-instruct", "full")
    assert cfg.run.name == "deepseek-ai--deepseek-coder-6.7b-instruct-full" and cfg.run.runs_dir == str(tmp_path)
    assert (cfg.search.cycles, cfg.search.candidates, cfg.search.replicate_candidates) == (22, 50, 50)
    assert cfg.sampler.mode == "full" and cfg.sampler.model.startswith("deepseek-ai/")
    small = pp.base_config(pp.parser().parse_args(["--cycles", "6", "--candidates", "24", "--replicate-candidates", "5"]))
    assert (small.search.cycles, small.search.candidates, small.search.replicate_candidates) == (6, 24, 5)


def test_bad_input_is_a_clear_error_with_exit_code_2(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        pp.main(["--modes", "delta", "partial", "--out", str(tmp_path)])
    assert e.value.code == 2 and "invalid choice: 'partial'" in capsys.readouterr().err
    monkeypatch.setattr(preflight, "reachable", lambda *a, **k: False)  # as offline, wherever the test runs
    assert pp.main(["--models", "smollm2", "no-such-llm", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: sampler.model = 'no-such-llm'" in err and not (tmp_path / "smollm2-delta").exists()
    assert pp.main(["--sampler.model", "smollm2", "--out", str(tmp_path)]) == 2
    assert "use --models instead" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # not an abbreviation of --models
        pp.main(["--model", "smollm2", "--out", str(tmp_path)])
    assert e.value.code == 2 and "unrecognized arguments: --model" in capsys.readouterr().err
    assert pp.main(["--report-only", "--out", str(tmp_path)]) == 2
    assert "none of the 6 run directories has a completed cycle" in capsys.readouterr().err


# ----------------------------------------------------------------------- the table on a fake store

#: Per mode, per cycle: (status, replicate accuracies, completion tokens, output lines) of each
#: proposal and the seconds of each phase.
FAKE = {
    "delta": [([("ok", [0.8, 0.78], 40, 10), ("ok", [0.6, 0.62], 50, 12), ("parse_error", [], 30, 0),
                ("ok", [0.7], 60, 14)], {"sample": 4.0, "apply": 1.0, "evaluate": 3.0, "update": 10.0}),
              ([("ok", [0.9, 0.88], 44, 11), ("low_accuracy", [0.1, 0.1], 52, 13), ("ok", [0.75], 48, 12),
                ("apply_error", [], 36, 9)], {"sample": 6.0, "apply": 1.0, "evaluate": 5.0, "update": 12.0})],
    "full": [([("ok", [0.5, 0.52], 300, 80), ("parse_error", [], 400, 0), ("syntax_error", [], 350, 90),
               ("build_error", [], 320, 85)], {"sample": 20.0, "apply": 1.0, "evaluate": 2.0, "update": 11.0}),
             ([("ok", [0.55, 0.5], 310, 82), ("syntax_error", [], 360, 88), ("parse_error", [], 420, 0),
               ("shape_error", [], 330, 84)], {"sample": 24.0, "apply": 1.0, "evaluate": 3.0, "update": 13.0})],
}


def fake_run(root, mode: str):
    store = RunStore(root)
    store.create(f'[run]\nname = "{root.name}"\n[sampler]\nmode = "{mode}"\n', overwrite=True)
    hook = Instrumentation(gamma_ref=0.7, mode=mode)
    for t, (proposals, seconds) in enumerate(FAKE[mode]):
        cands = [Candidate(cand=i, baseline="mlp", parent_cycle=-1, response=f"{t}.{i}", code=f"{t}.{i}", status=s,
                           results=[EvalResult(s, accuracy=a, seed=j) for j, a in enumerate(reps)],
                           completion_tokens=tokens, delta_lines=lines if mode == "delta" else 0,
                           code_lines=lines if mode == "full" else 0, is_elite=i == 0)
                 for i, (s, reps, tokens, lines) in enumerate(proposals)]
        record = CycleRecord(cycle=t, candidates=cands, gamma=0.8, update=UpdateStats(), seconds=seconds,
                             baselines=["mlp"], replicates=2)
        attrs = {"run_name": root.name, "sampler": "llm", "mode": mode, "seed": 0, "config": ""}
        store.write_cycle(cycle_dataset(record, hook.after_cycle(record), hook.variables, attrs))
        store.save_state({"cycles_done": t + 1})
    return root


@pytest.fixture
def fake_cells(tmp_path):
    return {("m", mode): fake_run(tmp_path / f"m-{mode}", mode) for mode in ("delta", "full")}


def t_interval(x):
    x = np.asarray(x, float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def wilson(k, n):
    p = k / n
    centre, half = p + Z**2 / (2 * n), Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return (centre - half) / (1 + Z**2 / n), (centre + half) / (1 + Z**2 / n)


def test_generation_table_matches_hand_computed_values(fake_cells):
    runs = pt.load_cells(fake_cells)
    rows = {(r[0], r[2]): r for r in pt.generation_table(runs).rows}
    delta, full = rows[("ours", "delta")], rows[("ours", "full")]
    lo, hi = wilson(5, 8)
    assert delta[3] == "8" and delta[4] == f"62.5% [{100 * lo:.1f}, {100 * hi:.1f}] (5/8)"
    m, lo, hi = t_interval([0.8, 0.6, 0.7, 0.9, 0.75])  # the valid ones' scoring runs (rep 0)
    assert delta[5] == f"{m:.3f} [{lo:.3f}, {hi:.3f}] (n=5)" and delta[6] == "0.900"
    m, lo, hi = t_interval([10, 12, 14, 11, 13, 12, 9])  # the parse error extracted no delta
    assert delta[7] == f"{m:.1f} [{lo:.1f}, {hi:.1f}] (n=7)"
    m, lo, hi = t_interval([300, 400, 350, 320, 310, 360, 420, 330])
    assert full[8] == f"{m:.0f} [{lo:.0f}, {hi:.0f}] (n=8)" and full[5].endswith("(n=2)")
    assert rows[("seed 001", "delta")][4] == "75.3%" and rows[("seed 001", "full")][5] == "42.3%"


def test_ratio_time_and_projection_match_hand_computed_values(fake_cells):
    runs = pt.load_cells(fake_cells)
    ratio = pt.validity_ratio(runs)
    se = math.sqrt(1 / 5 - 1 / 8 + 1 / 2 - 1 / 8)  # Katz: var log R = 1/k_d - 1/n_d + 1/k_f - 1/n_f
    assert ratio["delta"] == (5, 8) and ratio["full"] == (2, 8)
    assert ratio["measured"] == pytest.approx((2.5, 2.5 * math.exp(-Z * se), 2.5 * math.exp(Z * se)))
    assert all(isinstance(ratio[m], tuple) and ratio[m][0] > 1 for m in ("independent", "markov"))
    assert pt.ratio_table({"m": ratio}).rows[1][3] == f"2.50 [{2.5 * math.exp(-Z * se):.2f}, {2.5 * math.exp(Z * se):.2f}]"

    time = {r[0]: r for r in pt.time_table(runs).rows}
    assert time["m-delta"][1:7] == ["2", "10.0", "2.0", "8.0", "22.0", "42.0"]
    m, lo, hi = t_interval([18.0, 24.0])
    assert time["m-delta"][7] == f"{m:.1f} [0.0, {hi:.1f}] (n=2)"  # a duration's interval stops at 0

    # each cycle projects 22 x (50 x (sample + apply + evaluate) / proposals + update)
    projected = {"m-delta": [22 * (50 * 8 / 4 + 10), 22 * (50 * 12 / 4 + 12)],
                 "m-full": [22 * (50 * 23 / 4 + 11), 22 * (50 * 28 / 4 + 13)]}
    table, note = pt.projection_table(runs)
    rows = {r[0]: r for r in table.rows}
    for run, x in projected.items():
        m, lo, hi = t_interval(x)
        assert rows[run][4] == f"{m / 3600:.2f} [{max(lo, 0) / 3600:.2f}, {hi / 3600:.2f}]"
    means = [np.mean(x) for x in projected.values()]
    half = math.sqrt(sum((t_interval(x)[2] - t_interval(x)[0]) ** 2 for x in projected.values()))
    assert rows["sum of the measured runs"][4].startswith(f"{sum(means) / 3600:.2f} [")
    assert rows["sum of the measured runs"][4].endswith(f", {(sum(means) + half) / 3600:.2f}]")
    assert note.startswith("0 of the full protocol's 6 runs") and "smollm2-delta" in note


def test_claims_per_run_and_the_seed_verdicts(fake_cells):
    runs = pt.load_cells(fake_cells)
    per_run = pt.convergence_claims(runs)
    assert list(per_run) == ["m-delta", "m-full"] and all(len(c) == len(pt.CONVERGENCE) for c in per_run.values())
    arcsin = pt.arcsin_claims(runs)
    assert list(arcsin) == ["pooled", "m"] and arcsin["m"].verdict == "not enough data"  # 4 replicated, need 10
    rows = pt.seed_claims_table(runs, {"m": pt.validity_ratio(runs)}, arcsin).rows
    ratio_row = next(r for r in rows if r[1].startswith("delta valid more often"))
    # 2.5 [0.67, 9.3]: the interval holds 1, so n = 8 / 8 cannot decide whether delta is more often valid
    assert ratio_row[2] == "cannot decide" and "contains seed 000's 1.41" in ratio_row[3]
    assert {r[2] for r in rows} <= {"supports", "rejects", "cannot decide"}
    text = pt.report(fake_cells)
    assert "Bonferroni over 1 LLMs (each at 95%)" in text and "| m-delta |" in text


def test_a_run_in_one_mode_only_leaves_the_mode_claims_undecided(fake_cells):
    only_delta = {key: root for key, root in fake_cells.items() if key[1] == "delta"}
    runs = pt.load_cells(only_delta)
    rows = pt.seed_claims_table(runs, {"m": pt.validity_ratio(runs)}, pt.arcsin_claims(runs)).rows
    mode_rows = [r for r in rows if r[1].startswith(("delta valid", "token-error", "delta beats"))]
    assert len(mode_rows) == 3 and all(r[2:] == ["cannot decide", "needs both modes"] for r in mode_rows)
    assert all(len(r) == 4 for r in rows)


@pytest.mark.slow
def test_the_protocol_with_the_embedded_llm(tmp_path):
    argv = ["--models", "smollm2", "--cycles", "1", "--candidates", "2", "--baselines", "mlp", "--max-train", "200",
            "--max-test", "100", "--warm-start.steps", "6", "--lora.steps", "1", "--progress", "false",
            "--out", str(tmp_path)]
    assert pp.main(argv) == 0
    for mode in ("delta", "full"):
        run = load(tmp_path / f"smollm2-{mode}")
        assert run.attrs["sampler"] == "llm" and run.attrs["mode"] == mode and int(run.n_cand.sum()) == 2
    assert "| ours | smollm2 | full | 2 |" in (tmp_path / "report.md").read_text()
