"""The cross-entropy loop: sample -> score -> select -> update, then hooks and store.

One cycle (:meth:`CEM.run_cycle`) is the four CE steps:

1. **sample** N proposals from the sampler, prompted with this cycle's baselines;
2. **score**: apply each delta (``parse_error``/``apply_error``, tier recorded; a delta
   that leaves its parent as it was is ``unchanged``), check the syntax, look each
   architecture up in the archive of everything evaluated so far (zoo baselines
   included, :mod:`cem_nas.repeats`) *before* evaluation, so a repeat is never trained,
   train and score the new ones in the sandbox pool, give a random few of them extra
   proxy runs with other seeds (the replicates the SNR is estimated from), and then
   settle the repeats: with ``search.duplicates = inherit`` a repeat takes its twin's
   status and score (a twin from the same cycle is waited for), with ``reject`` it is a
   ``duplicate``;
3. **select** the elites: the top ``elite_fraction`` of the valid (status ``ok``)
   scores; gamma_t is the lowest elite score;
4. **update** the sampler toward the elites.

Before cycle 0 the zoo baselines are scored once on the same proxy (the reference
points: stored in every cycle file, and archived, so a proposal that reproduces one is a
repeat of it). :meth:`CEM.step` then runs the hooks and writes the cycle to the store;
the state that resume needs is written last (the commit point, see
:mod:`cem_nas.store`). Every proposal becomes a candidate row with exactly one final
status: nothing is dropped.
"""
from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cem_nas import zoo
from cem_nas.build import build
from cem_nas.config import ConfigError, RunConfig, to_toml
from cem_nas.delta import count_lines, make_delta
from cem_nas.evaluate import Pool
from cem_nas.hooks import Hook, Instrumentation, load_user_hook
from cem_nas.novelty import NoveltyArchive
from cem_nas.progress import Progress, TokenReporter, cycle_line
from cem_nas.records import Baseline, Candidate, CycleRecord, Elite, EvalResult, Proposal, UpdateStats
from cem_nas.repeats import RepeatArchive, inherited
from cem_nas.sampler.base import Sampler
from cem_nas.store import RunStore, cycle_dataset
from theory.cem import elite_count


@dataclass
class Ranked:
    """A scored candidate kept for iterative refinement and best-so-far."""

    name: str
    code: str
    score: float
    cycle: int
    family: str = ""
    """The zoo baseline its lineage starts from ("" in states saved before lineages were kept:
    the candidate is then a family of its own)."""

    @property
    def lineage(self) -> str:
        return self.family or self.name


@dataclass
class LoopState:
    """What the loop carries between cycles besides the sampler, archive and pool."""

    cycles_done: int = 0
    best: list[Ranked] = field(default_factory=list)  # best valid candidates so far, best first


def candidate_name(cycle: int, cand: int) -> str:
    """Archive key and baseline name of a candidate, e.g. ``c0003_017``."""
    return f"c{cycle:04d}_{cand:03d}"


def select_elites(cands: list[Candidate], elite_fraction: float) -> tuple[list[Candidate], float]:
    """Top ``elite_count(n_valid, rho)`` valid candidates by score (ties: earlier first) and gamma_t.

    The count is :func:`theory.cem.elite_count`'s, so the loop and the theory agree on it
    (rho = 0.07 of 100 valid is 7 elites, where ``ceil(0.07 * 100)`` in floating point is 8).
    gamma_t is the lowest elite score: the empirical (1 - rho) quantile of the valid
    scores. No valid candidate: no elites and gamma_t = NaN.

    >>> c = [Candidate(i, "b", -1, status="ok", results=[EvalResult("ok", accuracy=a)])
    ...      for i, a in enumerate([0.5, 0.9, 0.7, 0.9])]
    >>> elites, gamma = select_elites(c, 0.5)
    >>> [e.cand for e in elites], gamma
    ([1, 3], 0.9)
    >>> c = [Candidate(i, "b", -1, status="ok", results=[EvalResult("ok", accuracy=i / 100)])
    ...      for i in range(100)]
    >>> len(select_elites(c, 0.07)[0])
    7
    """
    valid = sorted((c for c in cands if c.status == "ok"), key=lambda c: (-c.score, c.cand))
    if not valid:
        return [], math.nan
    elites = valid[:elite_count(len(valid), elite_fraction)]
    return elites, elites[-1].score


class CEM:
    """The loop over cycles: owns the sampler, the pool, the archive, the store and the hooks."""

    def __init__(self, cfg: RunConfig, sampler: Sampler, pool: Pool, store: RunStore,
                 rng: np.random.Generator | None = None, archive: NoveltyArchive | None = None,
                 hooks: list[Hook] | None = None):
        self.cfg = cfg
        self.sampler = sampler
        self.pool = pool
        self.store = store
        self.rng = rng if rng is not None else np.random.default_rng(cfg.run.seed)
        self.archive = archive if archive is not None else NoveltyArchive(
            threshold=cfg.search.novelty_threshold, num_perm=cfg.novelty.num_perm, shingle=cfg.novelty.shingle)
        self.instrumentation = Instrumentation(cfg.hooks.gamma_ref, cfg.hooks.level, sampler.mode)
        self.hooks = [self.instrumentation] + (hooks if hooks is not None else [load_user_hook(s) for s in cfg.hooks.user])
        if cfg.hooks.tensorboard:
            from cem_nas.tensorboard import TensorBoardHook

            self.hooks.append(TensorBoardHook(store.root / "tb"))
        self.repeats = RepeatArchive(self.archive if cfg.novelty.enabled else None)
        self.state = LoopState()
        self.display = Progress(cfg.run.progress)
        sampler.progress = self.display  # an LLM shows its optimiser steps on the same console
        self.zoo = zoo_baselines(cfg.search.baselines)
        self.born = {}  # baseline name -> cycle it was born in (absent: zoo)

    # ------------------------------------------------------------ one cycle

    def run_cycle(self, t: int) -> CycleRecord:
        """One CE iteration: sample, score, select, update (see the module docstring)."""
        seconds: dict[str, float] = {}
        baselines = self.baselines()
        # drift is read off the distribution the proposals are drawn from, before its update
        neutral_diversity = self.sampler.neutral_diversity
        with timed(seconds, "sample"):
            proposals = self.sample(baselines, self.cfg.search.candidates)
        by_name = {b.name: b for b in baselines}
        with timed(seconds, "apply"):
            cands = [self.prepare(t, i, p, by_name) for i, p in enumerate(proposals)]
            self.find_repeats(t, cands)
        with timed(seconds, "evaluate"):
            self.evaluate(t, cands)
            self.settle_repeats(cands)
        elites, gamma = select_elites(cands, self.cfg.search.elite_fraction)
        for c in elites:
            c.is_elite = True
        with timed(seconds, "update"):
            stats = self.update(t, elites, proposals, by_name)
        return CycleRecord(cycle=t, candidates=cands, gamma=gamma, update=stats, seconds=seconds,
                           baselines=[b.name for b in baselines], alpha=self.sampler.alpha,
                           replicates=self.cfg.search.replicate_seeds, neutral_diversity=neutral_diversity,
                           zoo={b.name: r for b in self.zoo if (r := self.repeats.result(b.name)) is not None})

    def score_baselines(self) -> None:
        """Score every zoo baseline once on the proxy (seed 0) and archive it; a no-op once done."""
        todo = [b for b in self.zoo if b.name not in self.repeats]
        if not todo:
            return
        for b in todo:
            self.repeats.add(b.name, b.code)
        futures = {b.name: self.pool.submit(b.code, (0,)) for b in todo}
        with self.progress(total=len(futures), desc="score zoo baselines") as bar:
            for name, fut in futures.items():
                self.repeats.resolve(name, fut.result()[0])
                bar.update()

    def baselines(self) -> list[Baseline]:
        """The parents of this cycle: the zoo, or in refine mode the best so far (:meth:`parents`)."""
        if self.cfg.search.baseline_mode == "refine" and (parents := self.parents(self.state.cycles_done)):
            return [Baseline(r.name, r.code) for r in parents]
        return list(self.zoo)

    def sample(self, baselines: list[Baseline], n: int) -> list[Proposal]:
        """``n`` proposals, drawn in chunks of the generation batch size for a progress bar.

        Each chunk gets the baseline list rotated by its offset, so a sampler that takes
        baselines in turn assigns them exactly as one call for all ``n`` would.
        """
        chunk = self.cfg.sampler.generation.batch_size
        proposals: list[Proposal] = []
        with self.progress(total=n, desc="generate") as bar:
            tokens = TokenReporter(bar)
            self.sampler.on_decode_step = tokens  # an LLM reports every decoding step
            if self.cfg.search.redraw_repeats:
                self.sampler.seen = lambda code: self.repeats.twin(code)[0] is not None
            try:
                while len(proposals) < n:
                    shift = len(proposals) % len(baselines)
                    batch = self.sampler.propose(baselines[shift:] + baselines[:shift], min(chunk, n - len(proposals)), self.rng)
                    proposals.extend(batch)
                    tokens.sync(len(proposals), sum(p.completion_tokens for p in proposals))
            finally:
                self.sampler.on_decode_step = None
                self.sampler.seen = None
        return proposals

    def prepare(self, t: int, i: int, p: Proposal, by_name: dict[str, Baseline]) -> Candidate:
        """A proposal as a candidate: built from its parent (:func:`cem_nas.build.build`)."""
        c = Candidate(cand=i, baseline=p.baseline, parent_cycle=self.born.get(p.baseline, -1), prompt=p.prompt,
                      response=p.response, delta=p.delta or "", prompt_tokens=p.prompt_tokens,
                      completion_tokens=p.completion_tokens, gen_seconds=p.gen_seconds,
                      delta_lines=count_lines(p.delta) if p.delta else 0, stop_reason=p.stop_reason,
                      hint=str(p.meta.get("hint", "")), redraws=int(p.meta.get("redraws", 0)))
        built = build(by_name[p.baseline].code, p, self.sampler.mode, self.cfg.search.scope)
        c.status, c.message, c.apply_tier = built.status, built.message, built.tier
        if built.code is not None:
            c.code, c.code_lines = built.code, count_lines(built.code)
        return c

    def find_repeats(self, t: int, cands: list[Candidate]) -> None:
        """Look each built candidate up among everything evaluated so far (this cycle's earlier
        candidates too): a repeat names its twin, a new architecture is archived."""
        this_cycle = set()  # twins still to be trained: their repeats wait for the result
        for c in cands:
            if c.status:
                continue
            twin, similarity = self.repeats.twin(c.code)
            c.novelty = similarity
            # a twin without a recorded result (archived by a version that kept none) cannot be inherited
            if twin is not None and (twin in this_cycle or self.repeats.result(twin) is not None):
                c.twin = twin
            else:
                name = candidate_name(t, c.cand)
                self.repeats.add(name, c.code)
                this_cycle.add(name)
                c.is_new = True

    def settle_repeats(self, cands: list[Candidate]) -> None:
        """Give each repeat its twin's result (inherit) or the duplicate status (reject)."""
        reject = self.cfg.search.duplicates == "reject"
        for c in cands:
            if not c.twin:
                continue
            result = self.repeats.result(c.twin)
            c.inherited, message = inherited(result, c.twin, c.novelty, rejected=reject)
            if reject:
                c.status, c.message = "duplicate", message
            else:
                c.results, c.status, c.message = [c.inherited], c.inherited.status, message

    def evaluate(self, t: int, cands: list[Candidate]) -> None:
        """Proxy-train every new architecture, then replicate seeds on a random few scored ones."""
        pending = [c for c in cands if c.is_new]
        self._run(pending, (0,), "evaluate")
        for c in pending:
            c.status, c.message = c.results[0].status, c.results[0].message
            self.repeats.resolve(candidate_name(t, c.cand), c.results[0])
        reps = self.cfg.search.replicate_seeds
        scored = [c for c in pending if c.status == "ok"]
        k = min(self.cfg.search.replicate_candidates, len(scored)) if reps > 1 else 0
        chosen = [scored[j] for j in sorted(self.rng.choice(len(scored), size=k, replace=False))] if k else []
        self._run(chosen, tuple(range(1, reps)), "replicates")

    def _run(self, cands: list[Candidate], seeds: tuple[int, ...], what: str) -> None:
        futures = {self.pool.submit(c.code, seeds): c for c in cands}
        with self.progress(total=len(futures), desc=what) as bar:
            for fut, c in futures.items():
                c.results.extend(fut.result())
                bar.update()

    def update(self, t: int, elites: list[Candidate], proposals: list[Proposal],
               by_name: dict[str, Baseline]) -> UpdateStats:
        """The CE step on this cycle's elites; no valid candidate means no update.

        Each elite teaches its canonical answer, not the response as written: in delta mode
        ``make_delta(parent, code)`` with the warm start's context lines (exact ``@@``
        headers and full context, whatever tier made the response apply), in full mode the
        extracted file. An elite identical to its parent has no delta to teach and is left out.
        """
        context = self.cfg.sampler.warm_start.context
        answers = [make_delta(by_name[c.baseline].code, c.code, context) if self.sampler.mode == "delta" else c.code
                   for c in elites]
        batch = [Elite(baseline=c.baseline, prompt=c.prompt, completion=answer, score=c.score, cycle=t,
                       meta={**proposals[c.cand].meta, "cand": c.cand, "parent_cycle": c.parent_cycle,
                             "code": c.code, "delta": c.delta})
                 for c, answer in zip(elites, answers) if answer]
        if not batch:
            return UpdateStats()
        self.display.prefix = f"cycle {t} "
        return self.sampler.update(batch)  # an LLM update draws its steps on self.display

    # ------------------------------------------------------------ bookkeeping

    def step(self) -> CycleRecord:
        """Run the next cycle, run the hooks, write the cycle and commit the state."""
        t = self.state.cycles_done
        self.score_baselines()
        record = self.run_cycle(t)
        values: dict[str, Any] = {}
        variables: dict[str, tuple[str, str]] = {}
        for hook in self.hooks:
            values.update(hook.after_cycle(record))
            variables.update(getattr(hook, "variables", {}))
        for hook in self.hooks:
            if hasattr(hook, "after_values"):  # a user hook need not subclass Hook
                hook.after_values(record, values)
        self.display.line(cycle_line(record, values))
        self.remember_best(record)
        ds = cycle_dataset(record, values, variables, self.attrs())
        self.store.save_adapter(t, self.sampler.save)
        self.store.write_cycle(ds)
        self.state.cycles_done = t + 1
        self.store.save_state(self.state_dict())
        return record

    def run(self, cycles: int | None = None) -> None:
        """Run cycles until ``cycles`` (default: the config's) are done."""
        total = self.cfg.search.cycles if cycles is None else cycles
        if not self.sampler.warm_started and self.cfg.sampler.warm_start.enabled:
            # before cycle 0, not inside its propose: the warm start shows its own steps, and the
            # cycle's sample time is then generation only (a cached adapter loads in a second)
            self.display.prefix = ""
            self.sampler.warm_start()
        try:
            while self.state.cycles_done < total:
                self.step()
        finally:
            for hook in self.hooks:
                if hasattr(hook, "close"):
                    hook.close()

    def remember_best(self, record: CycleRecord) -> None:
        """Keep the parents of the next refine cycle (see :meth:`parents`) and what may replace
        them: the best valid candidates so far, and with ``refine_age`` every young one. A
        repeat is not kept beside its twin."""
        lineage = {r.name: r.lineage for r in self.state.best}
        for c in record.candidates:
            if c.status == "ok" and not c.twin:
                name = candidate_name(record.cycle, c.cand)
                self.state.best.append(Ranked(name, c.code, c.score, record.cycle, lineage.get(c.baseline, c.baseline)))
        self.state.best.sort(key=lambda r: (-r.score, r.cycle, r.name))
        # the best refine_top of every lineage, so that a per-family cap still finds its parents
        top, rank = max(self.cfg.search.refine_top, 1), Counter()
        kept = []
        for r in self.state.best:
            rank[r.lineage] += 1
            if rank[r.lineage] <= top or self._young(r, record.cycle + 1):
                kept.append(r)
        self.state.best = kept
        self.born = {r.name: r.cycle for r in self.state.best}

    def _young(self, r: Ranked, t: int) -> bool:
        """Whether ``r`` is young enough to be a parent in cycle ``t`` (only with ``refine_age``)."""
        age = self.cfg.search.refine_age
        return age > 0 and t - r.cycle <= age

    def parents(self, t: int) -> list[Ranked]:
        """The refine parents of cycle ``t``: the best ``refine_top`` so far (candidates and,
        with ``refine_zoo``, the scored zoo baselines as born in cycle -1), or with
        ``refine_age`` the best still young enough, topped up with the best older ones. With
        ``refine_per_family`` k, at most k parents of one lineage (zoo root) while other
        lineages have candidates left; the best of the rest fill the list when they have none."""
        pool = sorted(self.state.best + self.scored_zoo(), key=lambda r: (-r.score, r.cycle, r.name))
        ordered = [r for r in pool if self._young(r, t)] + [r for r in pool if not self._young(r, t)]
        top, cap = self.cfg.search.refine_top, self.cfg.search.refine_per_family
        if cap <= 0:
            return ordered[:top]
        picked, per = [], Counter()
        for r in ordered:
            if per[r.lineage] < cap:
                picked.append(r)
                per[r.lineage] += 1
        names = {r.name for r in picked}
        chosen = {r.name for r in (picked + [r for r in ordered if r.name not in names])[:top]}
        return [r for r in ordered if r.name in chosen]

    def scored_zoo(self) -> list[Ranked]:
        """The zoo baselines with their proxy scores, when refine_zoo puts them in the parents' pool."""
        if not self.cfg.search.refine_zoo:
            return []
        return [Ranked(b.name, b.code, r.accuracy, -1, b.name) for b in self.zoo
                if (r := self.repeats.result(b.name)) is not None and r.status == "ok"]

    def attrs(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"run_name": cfg.run.name, "sampler": cfg.sampler.kind, "mode": self.sampler.mode,
                "seed": cfg.run.seed, "baseline_mode": cfg.search.baseline_mode,
                "elite_fraction": cfg.search.elite_fraction, "novelty_threshold": cfg.search.novelty_threshold,
                "sampler_dtype": self.sampler.dtype,
                "duplicates": cfg.search.duplicates,
                "config": to_toml(cfg), "versions": json.dumps(versions())}

    @contextmanager
    def progress(self, total: int, desc: str) -> Iterator[Any]:
        self.display.prefix = f"cycle {self.state.cycles_done} "
        with self.display.bar(total, desc) as bar:
            yield bar

    def state_dict(self) -> dict:
        """Everything resume needs besides the adapter files (JSON-able)."""
        return {
            "cycles_done": self.state.cycles_done,
            "rng": self.rng.bit_generator.state,
            "archive": self.archive.state_dict(),
            "repeats": self.repeats.state_dict(),
            "sampler": self.sampler.state_dict(),
            "hooks": [h.state_dict() for h in self.hooks],
            "best": [vars(r) for r in self.state.best],
            "eval_cache": pool_cache_state(self.pool),
        }

    def load_state_dict(self, state: dict) -> None:
        self.state = LoopState(cycles_done=state["cycles_done"], best=[Ranked(**r) for r in state["best"]])
        self.born = {r.name: r.cycle for r in self.state.best}
        self.rng.bit_generator.state = state["rng"]
        self.archive = NoveltyArchive.from_state_dict(state["archive"])
        self.repeats = RepeatArchive(self.archive if self.cfg.novelty.enabled else None)
        self.repeats.load_state_dict(state.get("repeats"))
        self.sampler.load_state_dict(state["sampler"])
        if len(state["hooks"]) != len(self.hooks):
            raise ConfigError(f"the run was saved with {len(state['hooks'])} hooks and now has {len(self.hooks)}; "
                              "resume with the same hooks.user")
        for hook, hs in zip(self.hooks, state["hooks"]):
            hook.load_state_dict(hs)
        load_pool_cache_state(self.pool, state.get("eval_cache"))


def zoo_baselines(names: list[str]) -> list[Baseline]:
    """The named zoo architectures (all of them when ``names`` is empty)."""
    known = zoo.names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"search.baselines: unknown zoo baseline(s) {unknown}; known: {', '.join(known)}")
    return [Baseline(n, zoo.source(n)) for n in (names or known)]


@contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = time.perf_counter() - start


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("cem-nas", "torch", "transformers", "peft", "numpy", "xarray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def pool_cache_state(pool: Pool) -> Any:
    """The pool's evaluation cache as JSON-able data (None for an executor without one)."""
    return pool.cache.state_dict() if pool.cache is not None else None


def load_pool_cache_state(pool: Pool, state: Any) -> None:
    if state is not None and pool.cache is not None:
        pool.cache.load_state_dict(state)


# ---------------------------------------------------------------- building a run from a config

def build_sampler(cfg: RunConfig, task: Any) -> Sampler:
    """The sampling distribution the config names."""
    if cfg.sampler.kind == "grammar":
        from cem_nas.sampler.grammar import GrammarSampler

        return GrammarSampler(alpha=cfg.sampler.grammar_alpha, seed=cfg.run.seed, mode=cfg.sampler.mode,
                              scope=cfg.search.scope)
    if cfg.sampler.kind == "random":
        from cem_nas.sampler.uniform import RandomSampler

        return RandomSampler(seed=cfg.run.seed, mode=cfg.sampler.mode, scope=cfg.search.scope)
    from cem_nas.sampler.llm import LLMSampler

    sampler = LLMSampler(task, model=cfg.sampler.model, mode=cfg.sampler.mode, lora=cfg.sampler.lora,
                         generation=cfg.sampler.generation, warm_start=cfg.sampler.warm_start,
                         device=cfg.sampler.device, seed=cfg.run.seed,
                         load_in_4bit=cfg.sampler.load_in_4bit, dtype=cfg.sampler.dtype,
                         engine=cfg.sampler.engine, openai=cfg.sampler.openai, hints=cfg.sampler.hints,
                         scope=cfg.search.scope)
    print(f"sampler: {sampler.describe()}", file=sys.stderr, flush=True)
    return sampler


def make_pool(cfg: RunConfig, dataset: Any, protect: tuple[str, ...] = ()) -> Any:
    """The evaluation executor: a local sandbox pool, or a Dask cluster of them.

    ``protect``: directories candidate code may not read (the run directory).
    """
    if cfg.executor.kind == "dask":
        from cem_nas.distributed import make_pool as make_dask_pool

        return make_dask_pool(cfg, protect)
    from cem_nas.evaluate import EvaluationPool

    return EvaluationPool(dataset, cfg.proxy, workers=cfg.executor.workers, protect=protect)


def load_data(cfg: RunConfig) -> Any:
    from cem_nas.data import load_dataset

    d = cfg.data
    return load_dataset(d.dataset, root=d.root or None, max_train=d.max_train or None, max_test=d.max_test or None,
                        resize=d.resize or None, seed=cfg.run.seed, download=d.download)


def run_search(cfg: RunConfig, resume_dir: str | Path | None = None) -> Path:
    """Run (or continue) the search the config describes; returns the run directory.

    With ``resume_dir`` the loop restores the state of the last complete cycle (sampler
    state and adapter, novelty archive, RNG, evaluation cache, hook state) and runs the
    remaining cycles; the caller has checked that the config may resume this run.
    """
    root = Path(resume_dir) if resume_dir is not None else Path(cfg.run.runs_dir) / cfg.run.name
    store = RunStore(root)
    # a run killed before its first cycle committed has no state: it starts at cycle 0
    state = store.load_state() if resume_dir is not None and store.has_state() else None
    if state is not None and state["cycles_done"] >= cfg.search.cycles:
        return root  # nothing left to run
    if resume_dir is None:
        store.create(to_toml(cfg, header=f"resolved config of run {cfg.run.name}"), overwrite=cfg.run.overwrite)
    else:
        for path in store.discard_leftovers():
            print(f"resume: removed {path}, left by a run killed while writing it", file=sys.stderr, flush=True)
        # the resumable fields (cycles, workers, ...) may have changed: keep the file current
        store.write_config(to_toml(cfg, header=f"resolved config of run {cfg.run.name}"))
    dataset = load_data(cfg)
    sampler = build_sampler(cfg, dataset.task_spec())
    with make_pool(cfg, dataset, (str(root.resolve()),)) as pool:
        loop = CEM(cfg, sampler, pool, store)
        if state is not None and state["cycles_done"] > 0:
            sampler.load(store.adapter_path(state["cycles_done"] - 1))
            loop.load_state_dict(state)
        loop.run()
    return root
