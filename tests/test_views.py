"""What a person looks at after (or during) a run: the TensorBoard event files and the
HTML report, both made from a real short grammar run (sandbox pool, real training)."""
from __future__ import annotations

import base64
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from analysis import claims as cl
from analysis.load import as_runs
from analysis.report import main as report_main
from cem_nas.cem import run_search
from cem_nas.config import RunConfig, apply_overrides
from cem_nas.records import STATUSES, Candidate, CycleRecord, EvalResult, UpdateStats
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


# ----------------------------------------------------------------------- report.html

class Page(HTMLParser):
    """What a structural check of report.html needs: tags with attributes, text per section."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.section_text: dict[str, str] = {}
        self._section = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "h2" and attrs.get("id"):
            self._section = attrs["id"]

    def handle_data(self, data):
        self.section_text[self._section] = self.section_text.get(self._section, "") + data

    def count(self, tag: str, cls: str | None = None) -> int:
        return sum(1 for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split()))


@pytest.fixture(scope="module")
def report(grammar_run, tmp_path_factory):
    root, _ = grammar_run
    out = tmp_path_factory.mktemp("report")
    assert report_main([str(root), "--out", str(out)]) == 0
    return out, (out / "report.html").read_text(encoding="utf-8")


def test_report_html_is_self_contained_with_tables_figures_and_top_architectures(grammar_run, report):
    root, ds = grammar_run
    out, text = report
    page = Page(text)
    runs = as_runs(load(root))
    # nothing is fetched at view time: every image is inline PNG data, every link an anchor
    images = [a["src"] for t, a in page.tags if t == "img"]
    assert len(images) == 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for src in images)
    assert not [a for t, a in page.tags if t in ("script", "link", "iframe")]
    assert all(a["href"].startswith("#") for t, a in page.tags if t == "a")
    for section in ("verdicts", "architectures", "cycles", "status", "reliability"):
        assert section in page.section_text, section
    claims = cl.all_claims(runs)
    for c in claims:
        assert c.title in page.section_text["verdicts"] and c.summary in page.section_text["verdicts"]
    assert page.count("span", "verdict") >= 2 * len(claims)  # the table's badges and each claim's
    # the top architectures: the ten best distinct ones of the store (a repeat is its twin), best first, each a card
    cards = page.count("div", "card")
    score, code, twin = (ds[v].values.ravel() for v in ("score", "code", "twin"))
    scored = sorted({(float(s), str(c)) for s, c, t in zip(score, code, twin) if np.isfinite(s) and not t}
                    | {(float(ds.zoo_score.sel(zoo=t)), t) for s, t in zip(score, twin)
                       if np.isfinite(s) and t in ds.zoo.values}, reverse=True)
    assert cards == min(10, len(scored))
    facts = re.findall(r"score <b>([0-9.]+)</b>", text)
    assert [float(f) for f in facts] == pytest.approx([s for s, _ in scored[:cards]], abs=5e-4)
    # each card's line of descent starts at a zoo baseline and ends at the card's architecture
    chains = re.findall(r'<div class="chain">(.*?)</div>', text)
    assert len(chains) == cards
    for chain in chains:
        assert chain.startswith('<span class="node zoo">') and chain.rsplit("<span", 1)[1].startswith(' class="node self"')
    assert page.count("span", "add") > 0 and page.count("span", "del") > 0  # coloured deltas
    assert page.count("span", "hunk") > 0
    # per-cycle table and status-by-cycle table: one row per cycle
    cycles = ds.sizes["cycle"]
    tables = re.findall(r"<table>(.*?)</table>", text)
    cycle_table = next(t for t in tables if "p_t(E) [95% CI]" in t)
    assert cycle_table.count("<tr>") == cycles + 1
    status_table = next(t for t in tables if "<th class=\"r\">total</th>" in t)
    assert status_table.count("<tr>") == cycles + 1
    totals = [int(x) for x in re.findall(r'<td class="r">(\d+)</td></tr>', status_table)]
    assert totals == list(ds.n_cand.values.astype(int))
    # report.md says the same: same verdicts, same top architecture
    md = (out / "report.md").read_text()
    assert all(f"| {c.title} | {c.verdict} |" in md for c in claims)
    assert re.search(r"\| 1 \| g \| (c\d{4}_\d{3}) \|", md).group(1) in page.section_text["architectures"]


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                  "--no-first-run", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """Debian's chromium, installed with apt-get where it is missing (the test's setup)."""
    found = shutil.which("chromium")
    if found is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, capture_output=True, env=env,
                       timeout=1200)
        found = shutil.which("chromium")
    assert found, "chromium is not installed and apt-get could not install it"
    return found


@pytest.mark.slow
def test_report_html_renders_in_headless_chromium(report, tmp_path):
    out, _ = report
    shot = out / "report_screenshot.png"
    proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--window-size=1200,2400", f"--screenshot={shot}", (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 2400)
    # a page that rendered text, tables and figures compresses far worse than a blank one
    assert len(data) > 100_000, f"screenshot is only {len(data)} bytes: the page rendered (nearly) blank"
    kept = Path(os.environ.get("CEM_NAS_SCREENSHOT_DIR", tempfile.gettempdir())) / "cem_nas_report_screenshot.png"
    shutil.copy(shot, kept)  # left for a person to look at
