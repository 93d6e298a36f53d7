"""benchmarks.bench_gpu --tiny: the GPU benchmark's whole pipeline on CPU, in seconds."""
import ast
import math
import re

from benchmarks import bench_gpu
from cem_nas import zoo
from cem_nas.records import TaskSpec
from cem_nas.sampler.prompts import render_prompt

LABELS = ("device", "dtype", "model", "prompts", "decode shared-prefix", "decode hf generate", "decode other fold",
          "decode ratio", "CE update", "grammar search", "grammar statuses", "CUDA before fork", "summary")


def figures(out: str) -> dict[str, str]:
    return {label: text for label, _, text in (line.partition(": ") for line in out.splitlines()) if text}


def test_tiny_run_prints_every_figure_and_a_summary(capsys):
    assert bench_gpu.main(["--tiny"]) == 0
    out = capsys.readouterr().out
    found = figures(out)
    assert [label for label in LABELS if label not in found] == [] and "FAILED" not in out, out
    for label in ("decode shared-prefix", "decode hf generate"):
        rate = float(re.search(r"= ([\d.]+) proposals/s", found[label]).group(1))
        assert rate > 0, found[label]
    # 50 proposals x 16 tokens, every decoder and fold alike: EOS and the stop test are off
    assert "(equal; expected 800)" in found["decode ratio"], found["decode ratio"]
    assert float(re.search(r"median ([\d.]+) s", found["CE update"]).group(1)) > 0
    candidates = ast.literal_eval(re.search(r"candidates (\{.*?\})", found["grammar statuses"]).group(1))
    zoo_statuses = ast.literal_eval(re.search(r"zoo baselines (\{.*?\})", found["grammar statuses"]).group(1))
    assert sum(candidates.values()) == 2 and sum(zoo_statuses.values()) == 2, found["grammar statuses"]
    assert "proxy.device cpu" in found["grammar search"] and "initialised when the sandbox started: False" in out
    assert found["summary"].endswith("Every section ran."), found["summary"]


def test_a_failed_section_is_reported_and_the_others_still_run(capsys, monkeypatch):
    def broken(*args):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(bench_gpu, "decoder_figures", broken)
    assert bench_gpu.main(["--tiny", "--skip", "search", "--proposals", "4"]) == 1
    found = figures(capsys.readouterr().out)
    assert found["decode"] == "FAILED RuntimeError: out of memory, say"
    assert "CE update" in found and found["summary"].endswith("Failed sections: decode."), found


def test_chunk_tokenizer_gives_prompt_lengths_near_qwens():
    tok = bench_gpu.ChunkTokenizer(152064)
    task = TaskSpec("mnist5k", (1, 28, 28), 10)
    for name in zoo.names():
        text = render_prompt(tok, task, zoo.source(name), "delta")
        ids = tok(text)["input_ids"]
        # Qwen2.5-Coder's tokenizer: 504-858 tokens on these prompts (with its chat template)
        assert 450 <= len(ids) <= 900 and max(ids) < tok.pad_token_id and tok.decode(ids) == text


def test_step_seconds_times_both_decoders_of_a_random_sampler():
    """bench_generation's decode-step timing, on the helpers bench_gpu shares with it."""
    import dataclasses

    from benchmarks.bench_generation import DEFAULT_TOML, step_seconds
    from cem_nas.config import load_toml

    cfg = load_toml(DEFAULT_TOML).sampler
    sampler = bench_gpu.random_sampler(bench_gpu.TINY, "cpu", "float32", cfg)
    prompt = sampler.prompt_for(zoo.source("mlp"))
    assert math.isfinite(step_seconds(sampler, prompt, rows=3, steps=2))  # runs: a 2-step difference is noise
    sampler.generation = dataclasses.replace(sampler.generation, decoder="hf")
    assert math.isfinite(step_seconds(sampler, prompt, rows=3, steps=2))  # runs: a 2-step difference is noise
