"""Live progress: optimiser steps with running loss and time left, decoding with tokens/s,
one lasting summary line per cycle; and no deprecation warning from the project's own calls."""
from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pytest

from cem_nas.cem import CEM, build_sampler
from cem_nas.config import RunConfig, apply_overrides, to_toml
from cem_nas.progress import Progress
from cem_nas.records import Baseline
from cem_nas.sampler.llm import GenerationSettings, WarmStartSettings
from cem_nas.store import RunStore
from test_llm_sampler import CODE_A, CODE_B, elites_for, make_sampler, tokenizer  # noqa: F401 (fixture)


def bars(text: str) -> list[str]:
    """Every state a bar was drawn in (tqdm redraws in place with carriage returns)."""
    return [s.strip() for s in text.split("\r") if s.strip()]


def test_warm_start_and_update_show_steps_running_loss_and_time_left(tokenizer):
    sampler = make_sampler(tokenizer, steps=3, warm_start=WarmStartSettings(steps=5, batch_size=2, cache=False))
    out = io.StringIO()
    sampler.progress = Progress(file=out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the deprecated past_key_values/is_gradient_checkpointing calls are gone
        stats = sampler.warm_start()
        update = sampler.update(elites_for(sampler))
    drawn = bars(out.getvalue())
    warm = [b for b in drawn if b.startswith("warm start (LoRA on the diff corpus)")]
    assert [re.search(r"(\d+)/5", b).group(1) for b in warm][-1] == "5"
    # elapsed<remaining: the time left, known from the first step on
    assert all(re.search(r"\d\d:\d\d<\d\d:\d\d", b) for b in warm if not re.search(r" 0/5", b))
    # the probes before and after the steps say what the bar waits for
    assert any("NLL of" in b for b in warm if " 0/5" in b) and "NLL of" in warm[-1]
    final_loss = float(re.search(r"loss (\d+\.\d+)", [b for b in warm if "loss" in b][-1]).group(1))
    assert stats.steps == 5 and final_loss > 0
    upd = [b for b in drawn if b.startswith("update (LoRA on the elites)")]
    assert upd and "3/3" in upd[-1] and update.steps == 3
    # transient: each closed bar blanks its line, nothing of it stays
    assert out.getvalue().rstrip(" ").endswith("\r")


def test_running_loss_is_the_mean_of_the_last_steps(tokenizer, monkeypatch):
    from cem_nas.sampler import lora as lora_sft

    seen = {}
    original = lora_sft.train_steps

    def spy(*args, **kwargs):
        seen["losses"] = original(*args, **kwargs)
        return seen["losses"]

    monkeypatch.setattr(lora_sft, "train_steps", spy)
    sampler = make_sampler(tokenizer, steps=6)
    out = io.StringIO()
    sampler.progress = Progress(file=out)
    sampler.update(elites_for(sampler))
    shown = float(re.search(r"loss (\d+\.\d+)", [b for b in bars(out.getvalue()) if "loss" in b][-1]).group(1))
    assert shown == pytest.approx(np.mean(seen["losses"][-4:]), abs=6e-4)


@pytest.mark.parametrize("decoder", ["shared_prefix", "hf"])
def test_decoding_steps_report_every_token_and_finished_row(tokenizer, decoder):
    gen = GenerationSettings(max_new_tokens=10, batch_size=6, decoder=decoder, temperature=1.0)
    sampler = make_sampler(tokenizer, generation=gen)
    steps = []
    sampler.on_decode_step = lambda tokens, finished: steps.append((tokens, finished))
    proposals = sampler.propose([Baseline("a", CODE_A), Baseline("b", CODE_B)], 6, np.random.default_rng(0))
    assert steps and sum(t for t, _ in steps) == sum(p.completion_tokens for p in proposals)
    finished = [f for _, f in steps]
    assert finished == sorted(finished) and finished[-1] <= 6
    stopped_early = sum(p.stop_reason in ("eos", "fence") for p in proposals)
    assert finished[-1] >= stopped_early


def test_each_cycle_leaves_one_summary_line(tmp_path, capsys):
    cfg = apply_overrides(RunConfig(), {
        "run.runs_dir": str(tmp_path), "run.name": "g", "sampler.kind": "grammar", "data.max_train": "200",
        "data.max_test": "100", "search.cycles": "2", "search.candidates": "4", "search.baselines": "mlp",
        "search.replicate_seeds": "1", "executor.workers": "1"})
    from cem_nas.cem import make_pool, load_data

    store = RunStore(tmp_path / "g")
    store.create(to_toml(cfg))
    with make_pool(cfg, load_data(cfg)) as pool:
        CEM(cfg, build_sampler(cfg, None), pool, store).run()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cycle ")]
    assert len(lines) == 2
    for t, line in enumerate(lines):
        assert re.match(rf"cycle {t}: 4 proposals, \d valid \(\d novel\), gamma_t \S+, best so far \S+, "
                        r"p_t\(E\) \S+ \[\S+, \S+\] \| seconds: sample [\d.]+, apply [\d.]+, evaluate [\d.]+, "
                        r"update [\d.]+$", line), line
