"""What a person looks at after (or during) a run: the TensorBoard event files and the
HTML report, both made from a real short grammar run (sandbox pool, real training)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cem_nas.cem import run_search
from cem_nas.config import RunConfig, apply_overrides
from cem_nas.hooks import Candidate, CycleRecord
from cem_nas.records import STATUSES, EvalResult, UpdateStats
from cem_nas.store import load
from cem_nas.tensorboard import TensorBoardHook

pytest.importorskip("tensorboard", reason="the TensorBoard tests read event files with the tensorboard package")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def grammar_run(tmp_path_factory):
    """3 refine-mode cycles of 8 grammar proposals: lineage beyond the zoo, TensorBoard on."""
    cfg = apply_overrides(RunConfig(), {
        "run.runs_dir": str(tmp_path_factory.mktemp("runs")), "run.name": "g", "run.progress": "false",
        "sampler.kind": "grammar", "data.max_train": "300", "data.max_test": "100", "search.cycles": "3",
        "search.candidates": "8", "search.baselines": "mlp,plainnet", "search.baseline_mode": "refine",
        "search.replicate_candidates": "3", "search.replicate_seeds": "2", "executor.workers": "2",
        "hooks.tensorboard": "true"})
    root = run_search(cfg)
    return root, load(root)


def test_tensorboard_events_hold_every_cycle_variable(grammar_run):
    root, ds = grammar_run
    acc = read_events(root / "tb")
    tags = acc.Tags()
    for name in ("gamma", "p_E", "q_E", "valid_rate", "best_so_far", "seconds_evaluate"):
        events = acc.Scalars(name)
        stored = ds[name].values.astype(float)
        steps = [e.step for e in events]
        assert steps == [t for t in range(ds.sizes["cycle"]) if math.isfinite(stored[t])], name
        assert np.allclose([e.value for e in events], stored[np.isfinite(stored)], atol=1e-6), name
    for status in STATUSES:
        counts = [e.value for e in acc.Scalars(f"status/{status}")]
        assert counts == list(ds.status_count.sel(status_kind=status).values.astype(float))
    hist = acc.Histograms("score")
    for event in hist:
        scores = ds.score.sel(cycle=event.step).values.astype(float)
        assert event.histogram_value.num == np.isfinite(scores).sum()
        assert math.isclose(event.histogram_value.max, np.nanmax(scores), rel_tol=1e-6)
    assert [e.step for e in hist] == list(range(ds.sizes["cycle"]))
    texts = acc.Tensors("best_delta/text_summary")
    assert "best_delta/text_summary" in tags["tensors"] and len(texts) == ds.sizes["cycle"]
    for event in texts:
        text = event.tensor_proto.string_val[0].decode()
        c = ds.sel(cycle=event.step)
        best = int(np.nanargmax(c.score.values.astype(float)))
        assert f"score {float(c.score.values[best]):.4f}" in text
        assert str(c.delta.values[best] or c.code.values[best]).strip()[:60] in text


def _record(t: int, score: float) -> CycleRecord:
    cand = Candidate(cand=0, baseline="mlp", parent_cycle=-1, delta="--- a\n+++ b\n", status="ok",
                     results=[EvalResult("ok", accuracy=score)])
    return CycleRecord(cycle=t, candidates=[cand], gamma=score, update=UpdateStats(), seconds={}, baselines=["mlp"])


def test_a_resumed_run_replaces_the_interrupted_cycle_in_tensorboard(tmp_path):
    first = TensorBoardHook(tmp_path)
    for t, score in enumerate([0.2, 0.3, 0.9]):  # cycle 2 was interrupted before its commit
        first.after_values(_record(t, score), {"p_E": score})
    first.close()
    resumed = TensorBoardHook(tmp_path)
    resumed.after_values(_record(2, 0.4), {"p_E": 0.4})
    resumed.close()
    events = read_events(tmp_path).Scalars("p_E")
    assert [(e.step, round(e.value, 6)) for e in events] == [(0, 0.2), (1, 0.3), (2, 0.4)]
