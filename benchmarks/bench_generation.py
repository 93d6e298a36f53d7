"""Generation and CE-update speed, the earlier path vs the current one, per embedded model.

    python -m benchmarks.bench_generation                 # both models, both paths: long
    python -m benchmarks.bench_generation --models qwen2.5-coder-0.5b --paths new
    python -m benchmarks.bench_generation --profile       # + torch.profiler's top ops of one new-path cycle

Old path: float32 weights, transformers' generate with one left-padded row per proposal in
batches of 12 (the default run's cycle before), float32 CE update. New path: the dtype
policy (``sampler.dtype = auto``), the shared-prefix decoder with a cycle's proposals in one
batch, the CE update in the same dtype. Both sample with the same warm-started adapter
(the default config's warm start, cached; trained under the new dtype policy) so they draw
from the same distribution. Printed, old and new side by side in one run:

1. the matmul rate in float32 and bfloat16 (1024 tokens through the model's MLP up-projection,
   median of 10);
2. seconds per decode step at 1, 12 and 50 rows on one prompt (32 forced steps, minus the
   prefill): the new path should be nearly flat in the rows;
3. proposals per second at ``--samples`` proposals over the 10 zoo baselines, with the
   roofline: the arithmetic of the path (one prefill per prompt + the decode steps, or one
   prefill per proposal for the old path) divided by the measured bf16 matmul rate;
4. seconds per CE update at the default config's ``sampler.lora`` settings, each right after
   a generation over the zoo's prompts under the same adapter, as in a cycle (the new
   path takes those prompts' keys/values from it; the old path prefills every pass).

Timings scale with the machine's load: the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cem_nas import zoo
from cem_nas.config import load_toml
from cem_nas.records import Baseline, Elite, TaskSpec
from cem_nas.sampler import lora as lora_sft
from cem_nas.sampler.decode import STOP_REASONS, SamplingRule, decode
from cem_nas.sampler.embedded import DEFAULT_MODEL
from cem_nas.sampler.llm import LLMSampler
from cem_nas.sampler.model import load_model

TASK = TaskSpec("mnist5k", (1, 28, 28), 10)
DEFAULT_TOML = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "default.toml"


def synchronize(device) -> None:
    """Wait for the kernels queued on ``device`` (a no-op on CPU): a CUDA call returns
    before its work is done, so a timing must end with this."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def matmul_rate(dtype: torch.dtype, repeats: int = 10, shape: tuple[int, int, int] = (1024, 576, 1536),
                device: str = "cpu") -> float:
    """GFLOP/s of an (m x k) @ (k x n) matmul, ``shape`` = (m, k, n), median of ``repeats``.
    The default is a 1024-token prefill through one of SmolLM2's MLP projections."""
    m, k, n = shape
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times) / 1e9


def flops_per_token(model) -> tuple[float, float, int, int, int]:
    """(linear FLOPs per token in the decoder layers, lm_head FLOPs per token, layers,
    query heads, head dim) of a Llama-like model."""
    cfg = model.config
    linear = sum(2 * m.in_features * m.out_features for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and ".layers." in name and "lora_" not in name)
    head = 2 * cfg.vocab_size * cfg.hidden_size
    return linear, head, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads


def roofline_seconds(model, prompt_lengths: list[int], completions: list[list[int]], rate: float) -> float:
    """Arithmetic floor: sum of prefill and decode FLOPs / ``rate`` (GFLOP/s).

    Prefill of P tokens: ``P * linear + 2 * layers * heads * d * P^2`` (QK^T and PV under a
    causal mask) + one lm_head row. Decode of a token at context c:
    ``linear + head + 4 * layers * heads * d * c``. ``completions[j]`` holds the token counts
    of the rows decoded from prompt j.
    """
    linear, head, layers, heads, d = flops_per_token(model)
    total = 0.0
    for p, rows in zip(prompt_lengths, completions):
        total += p * linear + 2 * layers * heads * d * p * p + head
        for n in rows:
            total += n * (linear + head) + 4 * layers * heads * d * (n * p + n * (n - 1) / 2)
    return total / (rate * 1e9)


def hf_generate(model, prompts: list[list[int]], rule: SamplingRule, new_tokens: int, pad_id: int, device):
    """transformers' generate on one left-padded batch, one row per prompt (token ids), with
    exactly ``new_tokens`` new tokens per row (no EOS, no stop test); returns the new tokens
    (rows x new_tokens)."""
    from transformers import GenerationConfig

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    sample = rule.temperature > 0
    cfg = GenerationConfig(do_sample=sample, temperature=rule.temperature if sample else 1.0,
                           top_p=rule.top_p if sample else 1.0, top_k=rule.top_k if sample else 0,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id,
                           eos_token_id=None)
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=cfg)
    return out[:, width:]


def shared_decode(model, prompts: list[list[int]], counts: list[int], rule: SamplingRule, new_tokens: int, device,
                  fold_lora: bool, seed: int = 0) -> list:
    """The shared-prefix decoder on ``counts[j]`` rows of each prompt, exactly ``new_tokens``
    new tokens per row (no end token, no stop test); its completions per prompt."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return decode(model, prompts, counts, rule, new_tokens, set(), generator, device, fold_lora=fold_lora)


def step_seconds(sampler: LLMSampler, prompt: str, rows: int, steps: int = 32) -> float:
    """Seconds per decode step at ``rows`` rows of one prompt (``steps`` forced steps, the
    prefill's time subtracted), on the sampler's decoder."""
    ids = lora_sft.encode_prompt(sampler.tokenizer, prompt)
    g = sampler.generation
    rule = SamplingRule(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)

    def timed(n_steps: int) -> float:
        t0 = time.perf_counter()
        if sampler.decoder() == "hf":
            hf_generate(sampler.model, [ids] * rows, rule, n_steps, sampler.tokenizer.pad_token_id, "cpu")
        else:
            shared_decode(sampler.model, [ids], [rows], rule, n_steps, "cpu", fold_lora=True)
        return time.perf_counter() - t0

    return (timed(steps + 1) - timed(1)) / steps


def propose_timed(sampler: LLMSampler, baselines: list[Baseline], n: int, seed: int) -> tuple[list, float]:
    t0 = time.perf_counter()
    proposals = sampler.propose(baselines, n, np.random.default_rng(seed))
    return proposals, time.perf_counter() - t0


def roofline_of(sampler: LLMSampler, proposals: list, shared: bool, rate: float) -> float:
    if shared:
        by_prompt: dict[str, list[int]] = {}
        for p in proposals:
            by_prompt.setdefault(p.prompt, []).append(p.completion_tokens)
        lengths = [len(lora_sft.encode_prompt(sampler.tokenizer, k)) for k in by_prompt]
        return roofline_seconds(sampler.model, lengths, list(by_prompt.values()), rate)
    return roofline_seconds(sampler.model, [p.prompt_tokens for p in proposals],
                            [[p.completion_tokens] for p in proposals], rate)


def update_runs(sampler: LLMSampler, elites: list[Elite], repeats: int, prompts: list[str]) -> list:
    """``UpdateStats`` of ``repeats`` CE updates from the same adapter and sampler state.

    Update ``r`` draws its batches from ``default_rng(r)`` with an empty replay buffer, so
    every path times the same batches. Each update follows, untimed, a generation of one
    row per prompt in ``prompts`` under the adapter it starts from, as in a cycle (the new
    path reuses those prefills).
    """
    state = {k: v.clone() for k, v in sampler.model.state_dict().items() if "lora_" in k}
    saved = sampler.state_dict()
    runs = []
    for r in range(repeats):
        if sampler.prompt_kv is not None:
            sampler.generate(prompts)
        sampler.load_state_dict(saved | {"replay": [], "rng": np.random.default_rng(r).bit_generator.state})
        runs.append(sampler.update(elites))
        sampler.model.load_state_dict(state, strict=False)
    sampler.load_state_dict(saved)
    return runs


def profile_cycle(sampler: LLMSampler, baselines: list[Baseline], n: int, rows: int = 15) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sampler.propose(baselines, n, np.random.default_rng(1))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)


def timed_proposals(sampler: LLMSampler, baselines: list[Baseline], n: int, seed: int, shared: bool, rate: float,
                    repeats: int) -> tuple[float, float, list]:
    """(median seconds, median measured / roofline, proposals of the last repeat) of
    ``repeats`` generations of ``n`` proposals, printed one line each."""
    seconds, ratios = [], []
    for r in range(repeats):
        proposals, took = propose_timed(sampler, baselines, n, seed + r)
        tokens = [p.completion_tokens for p in proposals]
        reasons = {k: sum(p.stop_reason == k for p in proposals) for k in STOP_REASONS}
        floor = roofline_of(sampler, proposals, shared, rate)
        seconds.append(took)
        ratios.append(took / floor)
        print(f"    {n} proposals in {took:.1f} s = {n / took:.3f}/s ({sum(tokens) / took:.0f} new tok/s; completion "
              f"tokens median {statistics.median(tokens):.0f}, stop {reasons}); roofline {floor:.1f} s "
              f"(measured / roofline {took / floor:.1f})", flush=True)
    return statistics.median(seconds), statistics.median(ratios), proposals


def bench_model(model: str, args) -> dict[str, dict]:
    """Figures of the paths in ``args.paths`` for one embedded model: decode-step seconds,
    proposals/s against the roofline, CE-update seconds."""
    cfg = load_toml(args.config).sampler
    if args.warm_steps >= 0:
        cfg.warm_start.steps = args.warm_steps
    samplers = {}
    if "new" in args.paths:
        samplers["new"] = LLMSampler(
            TASK, load_model(model, "cpu", dtype=cfg.dtype), lora=cfg.lora, seed=args.seed, warm_start=cfg.warm_start,
            generation=dataclasses.replace(cfg.generation, decoder="shared_prefix", batch_size=max(args.samples, 1)))
    if "old" in args.paths:
        # the old path re-encoded every prompt in every pass and step, with the adapter's dropout
        samplers["old"] = LLMSampler(
            TASK, load_model(model, "cpu", dtype="float32"), seed=args.seed,
            lora=dataclasses.replace(cfg.lora, fixed_context=False, update_dropout=cfg.lora.dropout),
            generation=dataclasses.replace(cfg.generation, decoder="hf", batch_size=args.old_batch),
            warm_start=cfg.warm_start)
    first = next(iter(samplers.values()))
    shape = first.model.config
    rates = {str(d).split(".")[1]: matmul_rate(d, shape=(1024, shape.hidden_size, shape.intermediate_size))
             for d in (torch.float32, torch.bfloat16)}
    print(f"  matmul 1024x{shape.hidden_size} @ {shape.hidden_size}x{shape.intermediate_size} (its MLP): float32 "
          f"{rates['float32']:.0f} GFLOP/s, bfloat16 {rates['bfloat16']:.0f} GFLOP/s (the floors' rate)", flush=True)
    warm_dir = first.warm_start_dir()  # before the warm start: building the corpus changes the key
    t0 = time.perf_counter()
    warm = first.warm_start()
    print(f"  warm start: {time.perf_counter() - t0:.0f} s, corpus NLL {warm.elite_nll_before:.3f} -> "
          f"{warm.elite_nll_after:.3f}", flush=True)
    for sampler in samplers.values():
        if sampler is not first:
            sampler.load(warm_dir)
            sampler.warm_started = True
    if "old" in samplers:
        samplers["old"].prompt_kv = None  # the old path prefilled every prompt of every pass
    for label, sampler in samplers.items():
        print(f"  {label}: {sampler.describe()}", flush=True)

    baselines = [Baseline(name, zoo.source(name)) for name in zoo.names()]
    prompt = first.prompt_for(baselines[0].code)
    figures: dict[str, dict] = {label: {} for label in samplers}
    if args.step_rows:
        print(f"  decode step seconds (one {len(lora_sft.encode_prompt(first.tokenizer, prompt))}-token prompt, "
              f"{args.steps} steps):")
    for rows in args.step_rows:
        for label, sampler in samplers.items():
            figures[label][f"step@{rows}"] = step_seconds(sampler, prompt, rows, args.steps)
        print("    " + f"{rows:>3} rows: " + "   ".join(f"{label} {f[f'step@{rows}']:.3f}" for label, f in figures.items()),
              flush=True)
    proposals = []
    if not args.update_only:
        for label, sampler in samplers.items():
            n = args.samples if label == "new" else args.old_samples
            print(f"  {label} path, {n} proposals over the {len(baselines)} zoo baselines:")
            seconds, ratio, proposals_of = timed_proposals(sampler, baselines, n, args.seed, label == "new",
                                                           rates["bfloat16"], args.repeats)
            figures[label] |= {"proposals/s": n / seconds, "x roofline": ratio}
            proposals = proposals_of if label == "new" else proposals

    new = samplers.get("new", first)
    elites = []
    for p in proposals:
        try:  # the update refuses deltas that look truncated: take those it accepts
            new.completion_for(p.delta or "")
        except ValueError:
            continue
        elites.append(Elite(p.baseline, p.prompt, p.delta, 1.0, 0))
    elites = elites[:4]
    if len(elites) < 4:  # too few parseable proposals: corpus pairs keep the update timed
        elites += [Elite(f"corpus{i}", pr, c, 1.0, 0) for i, (pr, c) in enumerate(new.corpus_examples()[: 4 - len(elites)])]
    print(f"  CE update at {args.config}'s sampler.lora (steps {cfg.lora.steps}, batch {cfg.lora.batch_size}), "
          f"{len(elites)} elites, {args.updates} updates per path:")
    for label, sampler in samplers.items():
        runs = update_runs(sampler, elites, args.updates, [sampler.prompt_for(b.code) for b in baselines])
        figures[label]["update s"] = statistics.median(r.seconds for r in runs)
        print(f"    {label}: median {figures[label]['update s']:.1f} s  {[round(r.seconds, 1) for r in runs]}; "
              f"elite NLL {runs[0].elite_nll_before:.4f} -> {[round(r.elite_nll_after, 4) for r in runs]}", flush=True)
    if args.profile and "new" in samplers:
        print("\n  torch.profiler, one new-path cycle, top ops by self CPU time:")
        profile_cycle(samplers["new"], baselines, args.samples)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[DEFAULT_MODEL, "smollm2"],
                        help="embedded models, side by side (default %(default)s)")
    parser.add_argument("--paths", nargs="+", default=["old", "new"], choices=["old", "new"])
    parser.add_argument("--samples", type=int, default=50, help="proposals per cycle, new path")
    parser.add_argument("--old-samples", type=int, default=24,
                        help="proposals of the old path (its rate does not depend on the count: batches of 12)")
    parser.add_argument("--old-batch", type=int, default=12, help="the old path's generation batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per path (the median is kept)")
    parser.add_argument("--updates", type=int, default=3, help="CE updates timed per path")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: 2 if the load average is below 3, else 1)")
    parser.add_argument("--config", default=str(DEFAULT_TOML), help="config whose sampler settings are 'default'")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of one new-path cycle")
    parser.add_argument("--warm-steps", type=int, default=-1,
                        help="warm-start steps (-1: the config's); fewer give a cheaper, less tuned shared adapter")
    parser.add_argument("--step-rows", type=int, nargs="*", default=[1, 12, 50],
                        help="rows of the decode-step timing (none: skip it; the old path prefills every row)")
    parser.add_argument("--steps", type=int, default=32, help="forced steps of the decode-step timing")
    parser.add_argument("--update-only", action="store_true", help="time only the CE update (corpus pairs as elites)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    threads = args.threads or (2 if os.getloadavg()[0] < 3 else 1)
    torch.set_num_threads(threads)
    print(f"torch threads: {threads}; load average before: {os.getloadavg()}", flush=True)
    table = {}
    for model in args.models:
        print(f"\n== {model}", flush=True)
        table[model] = bench_model(model, args)
    columns = [f"step@{r}" for r in args.step_rows] + ["proposals/s", "x roofline", "update s"]
    print("\n| model | path | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    for model, paths in table.items():
        for label, f in paths.items():
            print(f"| {model} | {label} | " + " | ".join(f"{f[c]:.3f}" if c in f else "-" for c in columns) + " |")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
