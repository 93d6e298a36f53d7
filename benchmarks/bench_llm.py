"""LLM sampler on this CPU with the embedded SmolLM2-135M-Instruct.

Measures, per mode and ``--dtype``: model load seconds (from the safetensors cache), warm-start seconds
(or the cached result), batched generation tokens/s (and the batch-1 rate for the ratio),
the share of sampled proposals that parse, apply and build, and seconds per CE update.

    python -m benchmarks.bench_llm --samples 16 --modes delta full

"Build" means: the AST policy accepts the file, ``Net`` is constructed for the task and a
random batch gives (1, num_classes) logits. Run it on a quiet machine: timings scale with
the load average, which is printed alongside.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import time

import numpy as np
import torch

from cem_nas import zoo
from cem_nas.build import build
from cem_nas.novelty import NoveltyArchive
from cem_nas.policy import check_policy
from cem_nas.records import Baseline, Elite, TaskSpec
from cem_nas.sampler.llm import GenerationSettings, LLMSampler, LoRASettings, WarmStartSettings
from cem_nas.sampler.model import load_model

TASK = TaskSpec("mnist5k", (1, 28, 28), 10)


def outcome(proposal, baseline: Baseline, mode: str, scope: str = "architecture") -> tuple[str, str | None]:
    """(status, code) of a proposal: a status of :func:`cem_nas.build.build`, build_error, or ok."""
    built = build(baseline.code, proposal, mode, scope)
    if built.status:
        return built.status, built.code
    try:
        check_policy(built.code)
        zoo.check_output(zoo.build(built.code, TASK.in_shape, TASK.num_classes), TASK.in_shape, TASK.num_classes)
    except Exception:  # any failure of untrusted code is a build failure here
        return "build_error", built.code
    return "ok", built.code


def near_duplicates(codes: list[str], threshold: float) -> int:
    """How many of ``codes`` the run's novelty filter would drop, in order, as near-copies
    (MinHash Jaccard >= threshold) of an earlier one: the in-cycle duplicate count."""
    archive, dropped = NoveltyArchive(threshold=threshold), 0
    for i, code in enumerate(codes):
        if archive.check(code)[0]:
            archive.add(str(i), code)
        else:
            dropped += 1
    return dropped


def bench_mode(mode: str, loaded, args) -> dict:
    warm = WarmStartSettings(corpus_size=args.corpus, steps=args.warm_steps if mode == "delta" else args.full_warm_steps,
                             batch_size=args.warm_batch, lr=args.warm_lr, max_edits=args.max_edits,
                             context=args.context, max_changed=args.max_changed)
    generation = GenerationSettings(batch_size=args.gen_batch, temperature=args.temperature, few_shot=args.few_shot)
    if args.max_new_tokens:
        generation.max_new_tokens = args.max_new_tokens
    sampler = LLMSampler(TASK, loaded, mode=mode, warm_start=warm, lora=LoRASettings(steps=args.update_steps),
                         generation=generation)
    cached = (sampler.warm_start_dir() / "warm_start.json").is_file()
    t0 = time.perf_counter()
    warm_stats = sampler.warm_start()
    warm_seconds = time.perf_counter() - t0
    baselines = [Baseline(n, zoo.source(n)) for n in zoo.names()]
    proposals = sampler.propose(baselines, args.samples, np.random.default_rng(args.seed))
    by_name = {b.name: b for b in baselines}
    outcomes = [outcome(p, by_name[p.baseline], mode, sampler.scope) for p in proposals]
    statuses = [s for s, _ in outcomes]
    batches = {(p.meta["batch_seconds"], p.meta["batch_size"]) for p in proposals}
    tokens = sum(p.completion_tokens for p in proposals)
    seconds = sum(s for s, _ in batches)
    t1 = time.perf_counter()
    single = []
    if args.single:
        sampler.generation.batch_size = 1  # two proposals, one at a time: the unbatched rate
        single = sampler.propose(baselines[:1], 2, np.random.default_rng(args.seed))
        sampler.generation.batch_size = args.gen_batch
    single_rate = sum(p.completion_tokens for p in single) / (time.perf_counter() - t1) if single else float("nan")
    ok = [(p, code) for p, (s, code) in zip(proposals, outcomes) if s == "ok"]
    elites = [Elite(p.baseline, p.prompt, p.delta if mode == "delta" else code, 1.0, 0) for p, code in ok[:4]]
    if not elites:  # nothing valid: update toward corpus pairs so the update is still timed
        elites = [Elite(f"corpus{i}", pr, c, 1.0, 0) for i, (pr, c) in enumerate(sampler.corpus_examples()[:4])]
    update = sampler.update(elites)
    return {
        "mode": mode,
        "sampler": sampler.describe(),
        "warm_start_cached": cached,
        "warm_start_seconds": round(warm_seconds, 1),
        "warm_start": dataclasses.asdict(warm_stats),
        "samples": len(proposals),
        "status_counts": {s: statuses.count(s) for s in sorted(set(statuses))},
        "valid_share": statuses.count("ok") / max(len(statuses), 1),
        "distinct_valid": len({code for _, code in ok}),
        f"near_duplicates_valid_at_{args.novelty_threshold}": near_duplicates([code for _, code in ok],
                                                                             args.novelty_threshold),
        "completion_tokens_median": statistics.median(p.completion_tokens for p in proposals) if proposals else 0,
        "tokens_per_s_batched": tokens / seconds if seconds else float("nan"),
        "tokens_per_s_batch1": single_rate,
        "batched_vs_single": (tokens / seconds) / single_rate if single else float("nan"),
        "update": dataclasses.asdict(update),
        "hit_token_cap": sum(p.completion_tokens >= sampler._generation_config().max_new_tokens for p in proposals),
        "example_responses": [p.response[:400] for p in proposals[:3]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["delta", "full"], choices=["delta", "full"])
    parser.add_argument("--samples", type=int, default=50, help="proposals sampled per mode after warm start")
    warm, gen, lora = WarmStartSettings(), GenerationSettings(), LoRASettings()
    parser.add_argument("--corpus", type=int, default=warm.corpus_size, help="warm-start corpus pairs")
    parser.add_argument("--max-edits", type=int, default=warm.max_edits, help="grammar edits per corpus pair")
    parser.add_argument("--context", type=int, default=warm.context, help="context lines of corpus deltas")
    parser.add_argument("--max-changed", type=int, default=warm.max_changed, help="cap on a corpus delta's -/+ lines")
    parser.add_argument("--warm-steps", type=int, default=warm.steps, help="warm-start steps, delta mode")
    parser.add_argument("--full-warm-steps", type=int, default=warm.steps, help="warm-start steps, full mode")
    parser.add_argument("--warm-batch", type=int, default=warm.batch_size)
    parser.add_argument("--warm-lr", type=float, default=warm.lr)
    parser.add_argument("--update-steps", type=int, default=lora.steps)
    parser.add_argument("--gen-batch", type=int, default=gen.batch_size)
    parser.add_argument("--temperature", type=float, default=gen.temperature)
    parser.add_argument("--few-shot", type=int, default=gen.few_shot, help="corpus example deltas per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="delta-mode token budget (0: the default)")
    parser.add_argument("--single", action="store_true", help="also time batch-1 generation for the ratio")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: 2 if the load average is below 3, else 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="model dtype (warm starts of different dtypes are cached apart): run it once per "
                             "dtype to see whether bf16 changes the corpus NLL and the valid share")
    parser.add_argument("--novelty-threshold", type=float, default=0.97,
                        help="Jaccard at which built proposals count as near-duplicates (default.toml's)")
    args = parser.parse_args()
    threads = args.threads or (2 if os.getloadavg()[0] < 3 else 1)
    torch.set_num_threads(threads)
    print(f"torch threads: {threads}", flush=True)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cem_nas.sampler").setLevel(logging.INFO)  # one line per LoRA step
    print(f"load average before: {os.getloadavg()}", flush=True)
    loads = []
    for _ in range(2):
        t0 = time.perf_counter()
        load_model("smollm2", "cpu", dtype=args.dtype)
        loads.append(time.perf_counter() - t0)
    print(f"model load from cache: median {statistics.median(loads):.2f} s over {len(loads)}", flush=True)
    for mode in args.modes:
        result = bench_mode(mode, load_model("smollm2", "cpu", dtype=args.dtype), args)
        print(json.dumps(result, indent=1, default=float), flush=True)
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
