"""The CEM loop end to end: grammar sampler + real sandbox pool, a tiny random LLM, and a
scripted sampler that produces every failure the loop must turn into a status."""
import math
import re
import zlib
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from cem_nas import mutations, zoo
from experiments import cem_run
from cem_nas.cem import CEM, build_sampler, make_pool, select_elites
from cem_nas.config import ConfigError, RunConfig, apply_overrides, to_toml
from cem_nas.data import load_dataset
from cem_nas.delta import apply_delta, extract_delta, make_delta
from cem_nas.progress import QUIET
from cem_nas.records import STATUSES, EvalResult, Proposal, UpdateStats
from cem_nas.store import RunStore, load
from theory import reliability
from theory.convergence import wilson_interval

torch.set_num_threads(1)


def small_config(tmp_path, **overrides) -> RunConfig:
    base = {"run.runs_dir": str(tmp_path), "run.progress": "false", "data.max_train": "300", "data.max_test": "100",
            "search.cycles": "2", "search.candidates": "6", "search.baselines": "mlp", "search.elite_fraction": "0.34",
            "search.replicate_candidates": "4", "search.replicate_seeds": "2", "executor.workers": "2",
            "sampler.generation.batch_size": "16"}  # one propose call per cycle (the scripted sampler needs it)
    return apply_overrides(RunConfig(), {**base, **overrides})


def open_loop(cfg, sampler, pool) -> CEM:
    store = RunStore(f"{cfg.run.runs_dir}/{cfg.run.name}")
    store.create(to_toml(cfg))
    return CEM(cfg, sampler, pool, store)


@pytest.fixture(scope="module")
def pool():
    dataset = load_dataset("mnist5k", max_train=300, max_test=100, seed=0)
    with make_pool(small_config("/unused"), dataset) as p:
        yield p


@pytest.fixture(scope="module")
def grammar_run(pool, tmp_path_factory):
    cfg = small_config(tmp_path_factory.mktemp("runs"), **{"sampler.kind": "grammar", "run.name": "g"})
    loop = open_loop(cfg, build_sampler(cfg, None), pool)
    loop.run()
    return cfg, loop, load(loop.store.root)


def test_grammar_run_store_is_complete(grammar_run):
    cfg, loop, ds = grammar_run
    assert ds.sizes["cycle"] == 2 and ds.sizes["cand"] == 6
    statuses = ds.status.values.astype(str)
    assert set(statuses.ravel()) <= set(STATUSES) and "" not in statuses
    assert (ds.status_count.sum("status_kind") == ds.n_cand).all() and (ds.n_cand == 6).all()
    assert (ds.status == "ok").any()
    for name in ("gamma", "gamma_ref", "p_E", "p_E_lo", "p_E_hi", "q_E", "valid_rate", "score_best", "best_so_far",
                 "seconds_sample", "seconds_evaluate", "update_loss_before", "elite_nll_after", "tokens_per_proposal"):
        assert np.isfinite(ds[name].values).all(), name
    assert np.isfinite(ds.smoothing_residual.values[1]) and ds.alpha.values[1] == cfg.sampler.grammar_alpha
    # the grammar update is exact CE: it can only raise the elites' likelihood
    assert (ds.elite_nll_after <= ds.elite_nll_before + 1e-12).all()
    assert (loop.store.adapter_path(1) / "grammar_sampler.json").exists()
    # the neutral coordinate starts uniform (maximal diversity 1 - 1/K); no update can raise it
    k = mutations.cardinalities()[mutations.coordinate_names().index(mutations.NEUTRAL)]
    assert ds.neutral_diversity.values[0] == pytest.approx(1 - 1 / k)
    assert ds.neutral_diversity.values[1] <= 1 - 1 / k + 1e-12
    assert ds.attrs["sampler"] == "grammar" and "elite_fraction = 0.34" in ds.attrs["config"]


def test_grammar_run_hook_values_agree_with_theory(grammar_run):
    cfg, loop, ds = grammar_run
    rho = cfg.search.elite_fraction
    gamma_ref = float(ds.gamma.values[0])  # frozen from cycle 0
    previous = None
    for t in range(2):
        c = ds.sel(cycle=t)
        score, status, elite = c.score.values, c.status.values.astype(str), c.is_elite.values
        ok = status == "ok"
        assert elite.sum() == math.ceil(rho * ok.sum()) and not elite[~ok].any()
        assert float(c.gamma) == score[elite].min() and (score[ok & ~elite] <= float(c.gamma)).all()
        in_e = np.nan_to_num(score, nan=-np.inf) >= gamma_ref
        assert (c.in_E.values == in_e).all() and float(c.gamma_ref) == gamma_ref
        p, q = in_e.mean(), in_e[elite].mean()
        assert float(c.p_E) == pytest.approx(p) and float(c.q_E) == pytest.approx(q)
        assert (float(c.p_E_lo), float(c.p_E_hi)) == pytest.approx(wilson_interval(in_e.sum(), len(score)))
        if previous is not None:
            a = cfg.sampler.grammar_alpha
            expected = (1 - p) - (a * (1 - previous[1]) + (1 - a) * (1 - previous[0]))
            assert float(c.smoothing_residual) == pytest.approx(expected)
        previous = (p, q)
        rep = c.rep_score.values
        assert (rep[:, 0][ok] == score[ok]).all()
        rows = rep[np.isfinite(rep).sum(axis=1) == 2]
        # replicates go to new architectures only: a repeat was not trained
        assert len(rows) == min(4, (ok & c.is_new.values).sum()) == int(c.n_rep_arch)
        if len(rows) >= 3 and np.std(rows) > 0:
            assert float(c.icc) == pytest.approx(reliability.icc1(rows).icc)
        assert float(c.valid_rate) == ok.mean()
        assert float(c.score_best) == np.nanmax(score)


def test_grammar_run_report_shows_both_readings_and_the_baseline(grammar_run, tmp_path):
    from analysis.report import write_report

    _, _, ds = grammar_run
    text = write_report(grammar_run[1].store.root, tmp_path / "rep").read_text()
    assert "The verdicts use the inherit reading" in text and "unavailable" not in text
    row = next(line for line in text.splitlines() if line.startswith("| g |"))
    assert f"{float(ds.zoo_score.max()):.3f} mlp" in row
    assert np.isfinite(ds.p_E_inherit).all() and np.isfinite(ds.p_E_reject).all()
    assert (ds.p_E_reject <= ds.p_E_inherit).all()  # a repeat can only add to E when it inherits


# ---------------------------------------------------------------- every failure becomes a status

class ScriptedSampler:
    """Proposals that hit each early failure, plus valid edits of mlp (one repeated)."""

    mode = "delta"
    dtype = ""
    alpha = neutral_diversity = math.nan
    progress = QUIET
    on_decode_step = None
    warm_started = True

    def warm_start(self):
        return UpdateStats()

    def __init__(self):
        self.updates = []

    def propose(self, baselines, n, rng):
        base = baselines[0]
        lines = base.code.splitlines(keepends=True)
        out = [Proposal(base.name, "p", "prose, no diff", meta={"parse_error": "no diff in prose"}),
               Proposal(base.name, "p", "r", delta="--- a/net.py\n+++ b/net.py\n@@ -1,1 +1,1 @@\n-nothing here\n+x\n"),
               Proposal(base.name, "p", "r", delta=make_delta(base.code, base.code + "\ndef broken(:\n"))]
        k = 0
        while len(out) < n:
            # distinct edits (a block of different numbers each); the last one repeats the first
            j = k if len(out) < n - 1 else 0
            edit = "".join(f"\nEXTRA_{i} = {j * 1000 + i}" for i in range(8)) + "\n"
            out.append(Proposal(base.name, f"prompt {len(out)}", f"resp {len(out)}", delta=make_delta(base.code, base.code + edit),
                                completion_tokens=7, meta={"k": k}))
            k += 1
        assert "".join(lines) == base.code
        return out

    def update(self, elites):
        self.updates.append(elites)
        return UpdateStats(1.0, 0.5, 2.0, 1.0, steps=1, examples=len(elites))

    def state_dict(self):
        return {"updates": len(self.updates)}

    def load_state_dict(self, state):
        pass

    def save(self, directory):
        (directory / "scripted.txt").write_text(str(len(self.updates)))

    def load(self, directory):
        pass


class FakePool:
    """Deterministic scores from a hash of the code; records what was submitted."""

    cache = None

    def __init__(self):
        self.calls = []

    def submit(self, code, seeds):
        self.calls.append((code, tuple(seeds)))
        fut = Future()
        fut.set_result([EvalResult("ok", accuracy=0.3 + (zlib.crc32(f"{code}{s}".encode()) % 1000) / 2000, seed=s)
                        for s in seeds])
        return fut


def test_every_failure_is_a_row_with_its_status(tmp_path):
    cfg = small_config(tmp_path, **{"search.candidates": "9", "search.cycles": "1", "search.replicate_candidates": "2",
                                    "search.replicate_seeds": "3", "search.novelty_threshold": "1.0"})
    sampler, pool = ScriptedSampler(), FakePool()
    loop = open_loop(cfg, sampler, pool)
    record = loop.step()
    status = [c.status for c in record.candidates]
    assert status[:3] == ["parse_error", "apply_error", "syntax_error"]
    assert status[3:] == ["ok"] * 6
    repeat, twin = record.candidates[-1], record.candidates[3]
    assert (repeat.twin, repeat.score_source, repeat.score) == ("c0000_003", "archive", twin.score)
    assert repeat.message.startswith("repeat of c0000_003 (exact repeat)") and not repeat.is_new
    assert record.candidates[0].message == "no diff in prose" and record.candidates[3].apply_tier
    # repeats and failures are never trained; the zoo baseline is scored once first;
    # replicates only for 2 new ok candidates, seeds 1..2
    first = [c for c, s in pool.calls if s == (0,)]
    assert first[0] == zoo.source("mlp") and len(first) == 1 + 5 and sum(s == (1, 2) for _, s in pool.calls) == 2
    elites = sampler.updates[0]
    # ceil(0.34 x 6 ok): a repeat is a sample like any other
    assert len(elites) == 3 and all(e.meta["parent_cycle"] == -1 and e.baseline == "mlp" and e.cycle == 0 for e in elites)
    assert [e.score for e in elites] == sorted((c.score for c in record.candidates if c.status == "ok"), reverse=True)[:3]
    ds = load(loop.store.root)
    assert ds.status.values[0].tolist() == status and ds.n_rep_arch.item() == 2
    assert (ds.delta_lines.values[0, 3:] > 0).all() and ds.code.values[0, 0] == ""
    assert ds.twin.values[0, -1] == "c0000_003" and ds.score_source.values[0].tolist() == [""] * 3 + ["proxy"] * 5 + ["archive"]
    assert float(ds.zoo_score.sel(zoo="mlp")) == pool.submit(zoo.source("mlp"), (0,)).result()[0].accuracy
    assert (ds.new_share.item(), ds.novel_valid_yield.item(), ds.repeat_rate.item()) == (5 / 9, 5 / 9, 1 / 9)
    assert ds.p_E_inherit.item() == ds.p_E.item() and ds.attrs["duplicates"] == "inherit"


def test_a_rejected_repeat_is_a_duplicate_but_its_inherit_reading_is_stored(tmp_path):
    cfg = small_config(tmp_path, **{"search.candidates": "9", "search.cycles": "1", "search.novelty_threshold": "1.0",
                                    "search.duplicates": "reject", "search.elite_fraction": "1.0"})
    loop = open_loop(cfg, ScriptedSampler(), FakePool())
    record = loop.step()
    repeat = record.candidates[-1]
    assert repeat.status == "duplicate" and math.isnan(repeat.score) and not repeat.is_elite
    # the message names the twin's result but does not say the repeat took it
    assert "inherits" not in repeat.message and "rejected, not trained or scored" in repeat.message
    assert repeat.reading("inherit") == ("ok", record.candidates[3].score)
    ds = load(loop.store.root)
    # every ok candidate is an elite, so E holds them all: the repeat is in E only when inherited
    assert ds.p_E_reject.item() == ds.p_E.item() == 5 / 9 and ds.p_E_inherit.item() == 6 / 9
    assert ds.attrs["duplicates"] == "reject"


class EditsSampler(ScriptedSampler):
    """The proposals given, in order (an edit is a function of the baseline source)."""

    def __init__(self, edits):
        super().__init__()
        self.edits = edits

    def propose(self, baselines, n, rng):
        base = baselines[0]
        return [Proposal(base.name, "p", "r", delta=make_delta(base.code, edit(base.code)), complete=True)
                for edit in self.edits[:n]]


class FailingPool(FakePool):
    """A FakePool under which code holding FAIL does not build."""

    def submit(self, code, seeds):
        if "FAIL" not in code:
            return super().submit(code, seeds)
        self.calls.append((code, tuple(seeds)))
        fut = Future()
        fut.set_result([EvalResult("build_error", "FAIL in the code", seed=s) for s in seeds])
        return fut


def test_repeats_of_a_failure_of_the_zoo_and_with_novelty_off(tmp_path):
    block = "".join(f"\nX_{i} = {100 + i}" for i in range(8)) + "\n"  # enough new shingles to be new
    edits = [lambda c: c + block + "FAIL = 1\n",
             lambda c: c + block + "FAIL = 1  # again\n",  # an exact repeat (comments do not count) of a failure
             lambda c: "# a comment only\n" + c,  # reproduces its zoo baseline
             lambda c: c + block, lambda c: c + block]
    for novelty in ("true", "false"):
        cfg = small_config(tmp_path / novelty, **{"search.candidates": "5", "search.cycles": "1",
                                                  "novelty.enabled": novelty, "search.replicate_seeds": "1",
                                                  "search.novelty_threshold": "1.0"})
        pool = FailingPool()
        record = open_loop(cfg, EditsSampler(edits), pool).step()
        c = record.candidates
        assert [x.status for x in c] == ["build_error", "build_error", "ok", "ok", "ok"], novelty
        assert [x.twin for x in c] == ["", "c0000_000", "mlp", "", "c0000_003"]
        assert c[1].message.startswith("repeat of c0000_000 (exact repeat): inherits its build_error")
        assert c[2].score == record.zoo["mlp"].accuracy and c[4].score == c[3].score
        assert len(pool.calls) == 1 + 2  # the zoo baseline, then the two new architectures


def test_a_delta_that_changes_nothing_is_unchanged_never_trained(tmp_path):
    cfg = small_config(tmp_path, **{"search.candidates": "2", "search.cycles": "1"})
    pool = FakePool()

    class Identity(ScriptedSampler):
        def propose(self, baselines, n, rng):
            line = "        super().__init__()\n"
            same = f"```diff\n@@ -12,1 +12,1 @@\n-{line}+{line}```"
            return [Proposal("mlp", "p", same, delta=extract_delta(same), complete=True),
                    Proposal("mlp", "p", "", delta="", complete=True)]

    record = open_loop(cfg, Identity(), pool).step()
    assert [c.status for c in record.candidates] == ["unchanged", "unchanged"]
    assert "leaves its parent mlp as it was" in record.candidates[0].message
    assert len(pool.calls) == 1  # only the zoo baseline


def test_an_edit_of_the_training_recipe_is_out_of_scope_never_trained(tmp_path):
    cfg = small_config(tmp_path, **{"search.candidates": "2", "search.cycles": "1", "novelty.enabled": "false",
                                    "search.replicate_seeds": "1"})
    pool = FakePool()
    parent = zoo.source("mlp")
    recipe, widened = (mutations.render(parent, choice) for choice in ({"optimizer": "AdamW"}, {"width": "x2"}))

    class Edits(ScriptedSampler):
        def propose(self, baselines, n, rng):
            return [Proposal("mlp", "p", "r", delta=make_delta(parent, code), complete=True) for code in (recipe, widened)]

    record = open_loop(cfg, Edits(), pool).step()
    assert [c.status for c in record.candidates] == ["out_of_scope", "ok"]
    assert "changes train_setup" in record.candidates[0].message and not record.candidates[0].is_elite
    assert len(pool.calls) == 2  # the zoo baseline and the widened net: the recipe edit is never trained


def test_the_issue_responses_are_applied_in_the_loop(tmp_path):
    from test_delta import RESPONSES

    names = [r[0] for r in RESPONSES]
    cfg = small_config(tmp_path, **{"search.candidates": "4", "search.cycles": "1", "search.baselines": ",".join(names),
                                    "search.scope": "file"})

    class Responses(ScriptedSampler):
        def propose(self, baselines, n, rng):
            assert [b.name for b in baselines] == names
            return [Proposal(name, "p", text, delta=extract_delta(text), complete=True, stop_reason="fence")
                    for name, text, _, _ in RESPONSES]

    record = open_loop(cfg, Responses(), FakePool()).step()
    assert [c.status for c in record.candidates] == ["ok", "ok", "ok", "unchanged"]
    assert {c.apply_tier for c in record.candidates[:3]} == {"recount"}
    assert [c.stop_reason for c in record.candidates] == ["fence"] * 4


class MisnumberedSampler(ScriptedSampler):
    """Distinct one-line edits of mlp; every other delta has its @@ line numbers off by 3."""

    def propose(self, baselines, n, rng):
        base = baselines[0]
        out = []
        for k in range(n):
            edit = "".join(f"\nEXTRA_{i} = {k * 1000 + i}" for i in range(8)) + "\n"
            delta = make_delta(base.code, base.code + edit, context=2)
            if k % 2:
                delta = re.sub(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@",
                               lambda m: f"@@ -{int(m[1]) + 3},{m[2]} +{int(m[3]) + 3},{m[4]} @@", delta)
            out.append(Proposal(base.name, f"prompt {k}", f"```diff\n{delta}```", delta=delta, completion_tokens=7))
        return out


def test_elites_teach_the_canonical_delta_and_the_strict_share_is_stored(tmp_path):
    cfg = small_config(tmp_path, **{"search.candidates": "6", "search.cycles": "1", "search.elite_fraction": "1.0",
                                    "search.novelty_threshold": "1.0", "sampler.warm_start.context": "1"})
    sampler = MisnumberedSampler()
    loop = open_loop(cfg, sampler, FakePool())
    record = loop.step()
    assert [c.status for c in record.candidates] == ["ok"] * 6
    assert [c.apply_tier == "strict" for c in record.candidates] == [True, False] * 3
    base = zoo.source("mlp")
    # whatever tier applied the response, the elite is trained on make_delta(parent, code)
    # with the warm start's context: exact headers, and it applies at the strict tier
    for e in sampler.updates[0]:
        assert e.completion == make_delta(base, e.meta["code"], context=1) != e.meta["delta"]
        assert apply_delta(base, e.completion).tier == "strict"
    assert float(load(loop.store.root).strict_rate.item()) == 0.5


def test_refine_mode_uses_the_best_candidates_as_baselines(tmp_path):
    cfg = small_config(tmp_path, **{"search.candidates": "7", "search.cycles": "2", "search.baseline_mode": "refine",
                                    "search.refine_top": "1", "search.novelty_threshold": "1.0",
                                    "search.refine_zoo": "false"})
    sampler = ScriptedSampler()
    loop = open_loop(cfg, sampler, FakePool())
    first = loop.step()
    best = max((c for c in first.candidates if c.status == "ok"), key=lambda c: c.score)
    second = loop.step()
    assert second.baselines == [f"c0000_{best.cand:03d}"]
    assert {c.parent_cycle for c in second.candidates} == {0}
    assert all(e.meta["parent_cycle"] == 0 for e in sampler.updates[1])
    # the new baseline's code is the elite's code: the scripted edits apply on top of it
    assert all(c.code.startswith(best.code) for c in second.candidates if c.code)


def test_refine_zoo_keeps_the_zoo_in_the_parents_pool_until_candidates_outscore_it(tmp_path):
    cfg = small_config(tmp_path, **{"search.candidates": "12", "search.cycles": "2", "search.baseline_mode": "refine",
                                    "search.refine_top": "2", "search.novelty_threshold": "1.0",
                                    "search.baselines": "mlp,plainnet,vgg,alexnet"})
    loop = open_loop(cfg, ScriptedSampler(), FakePool())
    first = loop.step()
    zoo_scores = {name: r.accuracy for name, r in first.zoo.items() if r.status == "ok"}
    assert len(zoo_scores) >= 2
    assert first.baselines == sorted(zoo_scores, key=lambda n: (-zoo_scores[n], n))[:2]  # the best of the zoo
    pool = {**zoo_scores, **{f"c0000_{c.cand:03d}": c.score for c in first.candidates if c.status == "ok" and not c.twin}}
    second = loop.step()
    assert second.baselines == sorted(pool, key=lambda n: (-pool[n], n.startswith("c"), n))[:2]
    assert any(n.startswith("c0000_") for n in second.baselines), "no candidate outscored the zoo: change the fake scores"
    assert {c.parent_cycle for c in second.candidates} <= {-1, 0}


def test_refine_age_retires_parents_after_their_cycles(tmp_path):
    cfg = small_config(tmp_path, **{"search.candidates": "7", "search.cycles": "3", "search.baseline_mode": "refine",
                                    "search.refine_top": "2", "search.refine_age": "1", "search.novelty_threshold": "1.0",
                                    "search.refine_zoo": "false"})
    loop = open_loop(cfg, ScriptedSampler(), FakePool())
    records = [loop.step() for _ in range(3)]
    for prev, record in zip(records, records[1:]):
        born = sorted((c for c in prev.candidates if c.status == "ok" and c.is_new), key=lambda c: -c.score)
        assert len(born) == 3  # enough young ones: the older (maybe better) parents are retired
        assert record.baselines == [f"c{prev.cycle:04d}_{c.cand:03d}" for c in born[:2]]
    # the best of every cycle is still known, so an empty young generation falls back on it
    best = max((c for r in records for c in r.candidates if c.status == "ok" and c.is_new), key=lambda c: c.score)
    assert loop.parents(10)[0].score == best.score and loop.parents(10)[0].cycle < 10 - 1
    resumed = open_loop(apply_overrides(cfg, {"run.name": "resumed"}), ScriptedSampler(), FakePool())
    resumed.load_state_dict(loop.state_dict())
    assert [r.name for r in resumed.parents(3)] == [r.name for r in loop.parents(3)]


def test_the_sampler_s_discarded_draws_are_stored_per_candidate(tmp_path):
    class Redrawn(ScriptedSampler):
        def propose(self, baselines, n, rng):
            out = super().propose(baselines, n, rng)
            out[-1].meta["redraws"] = 2
            return out

    loop = open_loop(small_config(tmp_path, **{"search.cycles": "1"}), Redrawn(), FakePool())
    loop.run()
    assert load(loop.store.root).redraws.values[0].tolist() == [0] * 5 + [2]


def test_no_valid_candidate_means_no_update_and_nan(tmp_path):
    class Prose(ScriptedSampler):
        def propose(self, baselines, n, rng):
            return [Proposal("mlp", "p", "prose") for _ in range(n)]

    sampler = Prose()
    loop = open_loop(small_config(tmp_path, **{"search.cycles": "1"}), sampler, FakePool())
    loop.run()
    ds = load(loop.store.root)
    assert sampler.updates == [] and (ds.status == "parse_error").all()
    assert math.isnan(ds.gamma.item()) and ds.p_E.item() == 0 and math.isnan(ds.update_loss_before.item())


def test_tiny_random_llm_end_to_end(tmp_path):
    from test_llm_sampler import CORPUS, TASK, tiny_model, tokenizer  # noqa: F401 (fixture)
    from cem_nas.sampler.llm import GenerationSettings, LLMSampler, LoRASettings, WarmStartSettings

    tok = tokenizer.__wrapped__()
    sampler = LLMSampler(TASK, tiny_model(tok), lora=LoRASettings(rank=2, steps=1), corpus=CORPUS,
                         generation=GenerationSettings(max_new_tokens=8, batch_size=4),
                         warm_start=WarmStartSettings(enabled=False))
    cfg = small_config(tmp_path, **{"search.candidates": "4", "sampler.warm_start.enabled": "false"})
    loop = open_loop(cfg, sampler, FakePool())
    loop.run()
    ds = load(loop.store.root)
    assert ds.sizes["cycle"] == 2 and set(ds.status.values.ravel().astype(str)) <= set(STATUSES)
    assert (ds.completion_tokens > 0).all() and np.isfinite(ds.tokens_per_proposal).all()
    assert (loop.store.adapter_path(0) / "adapter_config.json").exists()


def test_select_elites_without_valid_candidates():
    assert select_elites([], 0.5)[0] == [] and math.isnan(select_elites([], 0.5)[1])


def test_lost_dask_scheduler_stops_the_run_cleanly_and_says_how_to_resume(tmp_path, capsys):
    # nothing listens on port 1: the run must end with a message, not a traceback
    code = cem_run.main(["--sampler", "grammar", "--executor", "dask", "--executor.scheduler", "tcp://127.0.0.1:1",
                         "--runs-dir", str(tmp_path), "--name", "lost", "--progress", "false"])
    assert code == 3
    assert f"--resume {tmp_path / 'lost'}" in capsys.readouterr().err


def test_unknown_baseline_is_refused(tmp_path):
    cfg = small_config(tmp_path, **{"search.baselines": "nonet"})
    with pytest.raises(ConfigError, match=r"unknown zoo baseline\(s\) \['nonet'\]"):
        open_loop(cfg, ScriptedSampler(), FakePool())
    assert "mlp" in zoo.names()


@pytest.mark.parametrize("redraw", [False, True])
def test_redraw_repeats_shows_the_sampler_what_the_run_has_seen_while_it_samples(tmp_path, redraw):
    class Watching(ScriptedSampler):
        seen = None

        def propose(self, baselines, n, rng):
            self.during = self.seen
            return super().propose(baselines, n, rng)

    cfg = small_config(tmp_path, **{"search.cycles": "2", "search.redraw_repeats": str(redraw).lower(),
                                    "search.novelty_threshold": "1.0"})
    sampler = Watching()
    loop = open_loop(cfg, sampler, FakePool())
    first = loop.step()
    loop.step()
    assert sampler.seen is None  # only while sampling
    if not redraw:
        assert sampler.during is None
        return
    new = next(c for c in first.candidates if c.status == "ok" and c.is_new)
    assert sampler.during(zoo.source("mlp")) and sampler.during(new.code)
    assert not sampler.during(zoo.source("vgg"))  # not a baseline of this run


def test_refine_per_family_caps_the_parents_of_one_lineage(tmp_path):
    from cem_nas.cem import Ranked

    cfg = small_config(tmp_path, **{"search.baseline_mode": "refine", "search.refine_top": "2",
                                    "search.refine_zoo": "false", "search.refine_per_family": "1"})
    loop = open_loop(cfg, ScriptedSampler(), FakePool())
    loop.state.best = [Ranked("a1", "", 0.9, 0, "resnet"), Ranked("a2", "", 0.8, 0, "resnet"),
                       Ranked("b1", "", 0.7, 0, "vgg"), Ranked("a3", "", 0.6, 0, "resnet")]
    assert [r.name for r in loop.parents(1)] == ["a1", "b1"]
    loop.cfg.search.refine_top = 3  # one other lineage only: the best of the rest fill the list, in rank order
    assert [r.name for r in loop.parents(1)] == ["a1", "a2", "b1"]
    loop.cfg.search.refine_per_family = 0
    assert [r.name for r in loop.parents(1)] == ["a1", "a2", "b1"]
    loop.cfg.search.refine_top = 2
    assert [r.name for r in loop.parents(1)] == ["a1", "a2"]
    # states saved before lineages were kept: each candidate is a lineage of its own
    assert Ranked("c0001_002", "", 0.5, 1).lineage == "c0001_002"


def test_candidates_inherit_their_parent_s_lineage(tmp_path):
    cfg = small_config(tmp_path, **{"search.candidates": "12", "search.cycles": "3", "search.baseline_mode": "refine",
                                    "search.refine_top": "3", "search.novelty_threshold": "1.0",
                                    "search.refine_per_family": "1",
                                    "search.baselines": "mlp,plainnet,vgg,alexnet"})
    loop = open_loop(cfg, ScriptedSampler(), FakePool())
    records = [loop.step() for _ in range(3)]
    zoo_names = {"mlp", "plainnet", "vgg", "alexnet"}
    family = {b: b for b in zoo_names}
    for record in records:
        for c in record.candidates:
            if c.status == "ok" and not c.twin:
                family[f"c{record.cycle:04d}_{c.cand:03d}"] = family[c.baseline]
    assert {r.family for r in loop.state.best} <= zoo_names
    assert all(r.family == family[r.name] for r in loop.state.best)
    assert any(r.cycle >= 1 for r in loop.state.best), "no second-generation candidate: change the fake scores"
    for record in records[1:]:
        lineages = [family[b] for b in record.baselines]
        assert len(set(lineages)) == len(lineages)  # one parent per lineage while others have candidates
    resumed = open_loop(apply_overrides(cfg, {"run.name": "resumed"}), ScriptedSampler(), FakePool())
    resumed.load_state_dict(loop.state_dict())
    assert [(r.name, r.family) for r in resumed.parents(3)] == [(r.name, r.family) for r in loop.parents(3)]
