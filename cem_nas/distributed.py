"""Candidate evaluation on a Dask cluster: the same ``submit``/``close`` interface as
:class:`cem_nas.evaluate.EvaluationPool`, with the sandbox workers spread over machines.

Layout. The run's main process (where the LLM lives) holds a Dask ``Client``, the
evaluation cache and the static policy check; only candidate code and seeds go out and
only small result records come back. Each Dask worker runs :class:`EvaluationPlugin`,
which loads the dataset *on the worker* by name and options (:class:`DatasetSpec`,
``cem_nas.data.load_dataset``; no tensors cross the network) and starts that worker's own
warm :class:`~cem_nas.evaluate.EvaluationPool` with one sandbox process per Dask thread.
A task (:func:`evaluate_on_worker`) hands one candidate to that pool, so every sandbox
guarantee holds on the worker exactly as it does locally.

Equivalence. A candidate's result depends on the code, the settings, the seed and the
data; the data are checked to be identical on every worker (:func:`dataset_fingerprint`,
compared at start and on every task), so statuses, parameter and FLOP counts and
accuracies equal those of the local pool for the same seeds. Accuracies can still differ
in the last bits when workers run on different CPUs or torch builds (floating-point
summation order of the kernels); on one machine they agree exactly.

Faults. A Dask worker that dies while evaluating makes the scheduler run the task again
on another worker; a task that was running on ``allowed-failures + 1`` dead workers is
given up by Dask (``KilledWorker``) and recorded here as ``worker_lost`` with a message
(never cached). A scheduler that goes away fails every pending and later ``submit`` with
:class:`SchedulerLost`, which the loop catches to stop after its last complete cycle.

Integrity. The Dask worker process is the trusted side of its sandbox pool: it holds the
test labels, never runs candidate code, and scores the predictions its sandbox children
return (:func:`cem_nas.evaluate.score`); the children hold no labels and cannot read the
dataset files (see the threat model in :mod:`cem_nas.sandbox`). A worker whose pool cannot
start (data missing, sandbox workers dying at start-up) fails the plugin's setup, and the
pool's constructor raises with that worker's reason instead of waiting for it.

Sandbox workers are plain subprocesses, so Dask workers may be daemonic (the default).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from distributed import WorkerPlugin

from cem_nas.evaluate import (EvalSettings, EvaluationCache, EvaluationPool, _dataset_id, cache_key, complete,
                              static_result)
from cem_nas.records import EvalResult

class SchedulerLost(RuntimeError):
    """The Dask scheduler went away (or was never reached): no result can come back.

    The loop should stop without storing the cycle in progress; everything up to the last
    complete cycle is on disk and the run resumes once a scheduler is back.
    """


class DatasetMismatch(RuntimeError):
    """Dask workers hold different data (different data roots, files or package versions)."""


@dataclass(frozen=True)
class DatasetSpec:
    """How a worker loads the dataset: the arguments of ``cem_nas.data.load_dataset``.

    ``root`` must name a directory that exists on every worker (a shared file system or
    the same path on each machine); the bundled ``mnist5k`` and ``digits`` need none.
    """

    name: str = "mnist5k"
    root: str | None = None
    max_train: int | None = None
    max_test: int | None = None
    resize: int | tuple[int, ...] | None = None
    seed: int = 0
    download: bool = True

    @classmethod
    def of_config(cls, cfg: Any) -> "DatasetSpec":
        """The spec of a RunConfig's data (the same arguments as ``cem.load_data``)."""
        d = cfg.data
        return cls(d.dataset, d.root or None, d.max_train or None, d.max_test or None,
                   d.resize or None, cfg.run.seed, d.download)

    def load(self):
        from cem_nas.data import load_dataset
        return load_dataset(self.name, root=self.root, max_train=self.max_train, max_test=self.max_test,
                            resize=self.resize, seed=self.seed, download=self.download)


def dataset_fingerprint(dataset) -> str:
    """sha256 of the dataset's tensors (all four splits, bytes and shapes): equal on two
    machines iff they hold the same data."""
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        t = getattr(dataset, name).detach().cpu().contiguous()
        h.update(json.dumps([name, list(t.shape), str(t.dtype)]).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class EvaluationPlugin(WorkerPlugin):
    """Dask worker plugin: the dataset and a warm sandbox pool, started once per worker.

    Registered by :class:`DaskEvaluationPool`; Dask runs :meth:`setup` on every worker
    that is or later becomes part of the cluster (a restarted worker included).
    """

    idempotent = False

    def __init__(self, spec: DatasetSpec, settings: EvalSettings, protect: tuple[str, ...] = ()) -> None:
        self.spec, self.settings, self.protect = spec, settings, tuple(protect)
        self.pool: EvaluationPool | None = None
        self.dataset_id = self.fingerprint = ""
        self.evaluated = 0  # tasks completed on this worker (tests check nothing ran twice)
        self.error = ""  # why setup failed, for the client's message

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "settings": self.settings, "protect": self.protect}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    async def setup(self, worker) -> None:
        # Loading data and starting interpreters takes seconds: keep the event loop (and
        # the worker's heartbeats) running meanwhile.
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._start, worker.state.nthreads)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"[-3000:]
            raise

    def _start(self, slots: int) -> None:
        # The nanny sets MALLOC_TRIM_THRESHOLD_ for its worker; inherited by the sandbox
        # processes it makes glibc return (and re-fault) every freed tensor, which made
        # each training 1.5-2x slower than in the local pool.
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        dataset = self.spec.load()
        self.dataset_id, self.fingerprint = _dataset_id(dataset), dataset_fingerprint(dataset)
        self.pool = EvaluationPool(dataset, self.settings, workers=slots, protect=self.protect)

    def teardown(self, worker) -> None:
        if self.pool is not None:
            self.pool.close()


def _plugin(plugin_name: str, worker=None) -> EvaluationPlugin:
    if worker is None:
        from distributed import get_worker
        worker = get_worker()
    plugin = worker.plugins.get(plugin_name)
    if plugin is None or plugin.pool is None:
        why = plugin.error if plugin is not None and plugin.error else "its plugin setup failed; see the worker's log"
        raise RuntimeError(f"worker {worker.address} has no evaluation pool {plugin_name!r}: {why}")
    return plugin


def worker_identity(plugin_name: str, dask_worker=None) -> tuple[str, str]:
    """(cache dataset id, data fingerprint) of this worker's pool (``Client.run`` passes
    ``dask_worker``)."""
    plugin = _plugin(plugin_name, dask_worker)
    return plugin.dataset_id, plugin.fingerprint


def evaluate_on_worker(plugin_name: str, fingerprint: str, code: str, seeds: list[int]) -> list[dict]:
    """The Dask task: evaluate one candidate in this worker's sandbox pool."""
    plugin = _plugin(plugin_name)
    if plugin.fingerprint != fingerprint:
        raise DatasetMismatch(f"this worker's data (fingerprint {plugin.fingerprint[:12]}) differ from the "
                              f"run's ({fingerprint[:12]}); check the data root and versions on every worker")
    results = plugin.pool.evaluate(code, seeds)
    plugin.evaluated += 1
    return [dataclasses.asdict(r) for r in results]


def _fail(fut: concurrent.futures.Future, exc: BaseException) -> None:
    """Fail ``fut`` unless it is already settled (or cancelled by its caller meanwhile)."""
    try:
        fut.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass


class DaskEvaluationPool:
    """Candidates evaluated on a Dask cluster; a drop-in for :class:`EvaluationPool`.

    ``scheduler``: the address of a running scheduler (``tcp://host:8786``); None starts a
    ``LocalCluster`` of ``workers`` processes with ``threads_per_worker`` sandbox slots
    each, closed with the pool. ``max_retries``: for the local cluster, how many worker
    deaths a candidate survives before it is ``worker_lost`` (Dask's
    ``distributed.scheduler.allowed-failures``; a remote scheduler uses its own setting).
    ``min_workers`` workers must have joined within ``start_timeout`` seconds; a scheduler
    that does not answer within ``connect_timeout`` seconds, at the start or when the
    client tries to reconnect after losing it, is :class:`SchedulerLost` (a live scheduler
    answers in milliseconds, so a run should not wait minutes to say so).

    >>> # with DaskEvaluationPool(DatasetSpec("mnist5k", max_train=1000), EvalSettings(),
    >>> #                         scheduler="tcp://10.0.0.5:8786") as pool:
    >>> #     results = pool.submit(code, seeds=(0, 1)).result()
    """

    def __init__(self, data: DatasetSpec, settings: EvalSettings | None = None, *, scheduler: str | None = None,
                 workers: int = 2, threads_per_worker: int = 1, cache: EvaluationCache | None = None,
                 protect: Sequence[str] = (), max_retries: int = 1, min_workers: int = 1,
                 start_timeout: float = 300.0, connect_timeout: float = 30.0) -> None:
        if not isinstance(data, DatasetSpec):
            raise TypeError(f"data must be a DatasetSpec (the dataset is loaded on each worker), "
                            f"got {type(data).__name__}")
        for name, value, low in (("workers", workers, 1), ("threads_per_worker", threads_per_worker, 1),
                                 ("max_retries", max_retries, 0), ("min_workers", min_workers, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        import dask
        from distributed import Client, LocalCluster
        self.settings = settings or EvalSettings()
        self.cache = cache if cache is not None else EvaluationCache()
        self.plugin_name = f"cem-nas-eval-{uuid.uuid4().hex[:12]}"
        self._cluster = None
        self._pending: set[concurrent.futures.Future] = set()
        self._waiting: collections.deque = collections.deque()  # candidates not yet sent (see _dispatch)
        self._running = 0
        self._slots_known, self._slots_at = 1, float("-inf")
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._closed = False
        self._registered = False
        try:
            if scheduler is None:
                with dask.config.set({"distributed.scheduler.allowed-failures": max_retries}):
                    self._cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                                 processes=True, dashboard_address=None)
                self._client = Client(self._cluster, timeout=min(connect_timeout, start_timeout))
                min_workers = workers
            else:
                try:
                    self._client = Client(scheduler, timeout=min(connect_timeout, start_timeout))
                except OSError as exc:
                    raise SchedulerLost(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
            self._client.register_plugin(EvaluationPlugin(data, self.settings, tuple(str(p) for p in protect)),
                                         name=self.plugin_name)
            self._registered = True
            self._client.wait_for_workers(min_workers, timeout=start_timeout)
            self._check_workers()
        except BaseException:
            self._shutdown()
            raise

    def _check_workers(self) -> None:
        found = self._client.run(worker_identity, self.plugin_name)
        identities = set(found.values())
        if len(identities) != 1:
            listing = "; ".join(f"{addr}: {fp[:12]}" for addr, (_, fp) in sorted(found.items()))
            raise DatasetMismatch(f"Dask workers hold different data ({listing}); every worker must load the "
                                  "same files (same data root contents, same cem_nas and torch versions)")
        self._dataset_id, self._fingerprint = identities.pop()

    @property
    def workers(self) -> int:
        """Sandbox slots over the cluster now (Dask threads = sandbox processes)."""
        return int(self._client.scheduler_info(n_workers=0).get("total_threads", 0))

    def worker_pids(self) -> dict[str, int]:
        """Process id of each Dask worker, by address (tests kill one)."""
        return self._client.run(os.getpid)

    def key(self, code: str, seed: int) -> str:
        """The cache key, identical to the local pool's for the same data and settings."""
        return cache_key(code, self.settings, seed, self._dataset_id)

    def submit(self, code: str, seeds: Sequence[int] = (0,)) -> concurrent.futures.Future:
        """A future of one EvalResult per seed (in order); cached seeds are not rerun.

        Raises :class:`SchedulerLost` when the scheduler is gone; the future fails with it
        when the scheduler goes away before the result is back.
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds is empty; pass at least one replicate seed, e.g. (0,)")
        if self._closed:
            raise RuntimeError("the pool is closed; create a new one")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        keys = [self.key(code, s) for s in seeds]
        cached = {s: self.cache.get(k) for s, k in zip(seeds, keys)}
        todo = [s for s in seeds if cached[s] is None]
        fresh = [] if not todo else static_result(code, todo)
        if fresh is not None:
            complete(fut, self.cache, seeds, keys, cached, fresh)
            return fut
        if self._client.status != "running":
            raise SchedulerLost(f"the Dask client is {self._client.status}: the scheduler is gone")
        with self._lock:
            self._pending.add(fut)
            self._waiting.append((fut, code, seeds, keys, cached, todo))
        fut.add_done_callback(self._forget)
        self._dispatch()
        return fut

    def _slots(self) -> int:
        """Sandbox slots over the cluster (Dask threads), asked of the scheduler at most
        once a second; at least 1, so that while every worker is gone work waits at the
        scheduler (which knows when workers come back), not here."""
        now = time.monotonic()
        if now - self._slots_at > 1.0:
            try:
                self._slots_known = max(1, self.workers)
            except (Exception, asyncio.CancelledError):  # scheduler going away: the next status check says so
                pass
            self._slots_at = time.monotonic()
        return self._slots_known

    def _dispatch(self) -> None:
        """Send waiting candidates to the scheduler while a slot is free.

        Why not submit everything at once: the scheduler places a task on a worker the
        moment it arrives, guessing its duration, and work stealing is too slow to undo a
        bad guess at the scale of a candidate; one worker then trains a queue of
        candidates while another idles (a batch of six short candidates on two workers
        took 1.9x the local pool's time). Holding back all but one task per slot makes
        every worker take the next candidate when it frees up, as the local pool does.
        """
        while True:
            if self._client.status != "running":  # a task sent now would never come back
                with self._lock:
                    waiting, self._waiting = list(self._waiting), collections.deque()
                for fut, *_ in waiting:
                    _fail(fut, SchedulerLost(f"the Dask client is {self._client.status}: the scheduler is gone"))
                return
            slots = self._slots()
            with self._lock:
                if not self._waiting or self._running >= slots:
                    return
                fut, code, seeds, keys, cached, todo = self._waiting.popleft()
                self._running += 1
            if fut.done():  # cancelled by the caller while it waited
                self._finished()
                continue
            task_key = f"cem-eval-{keys[0][:12]}-{next(self._counter)}"
            try:
                dfut = self._client.submit(evaluate_on_worker, self.plugin_name, self._fingerprint, code, todo,
                                           key=task_key, pure=False)
            except (OSError, RuntimeError) as exc:
                self._finished()
                _fail(fut, SchedulerLost(f"cannot submit to the Dask scheduler: {exc}"))
                continue

            def done(df, fut=fut, seeds=seeds, keys=keys, cached=cached, todo=todo) -> None:
                try:
                    self._settle(df, fut, seeds, keys, cached, todo)
                except BaseException as exc:  # never leave the caller waiting forever
                    _fail(fut, exc)
                finally:
                    self._finished()
                    self._dispatch()

            dfut.add_done_callback(done)

    def _finished(self) -> None:
        with self._lock:
            self._running -= 1

    def _settle(self, df, fut, seeds, keys, cached, todo) -> None:
        from distributed.scheduler import KilledWorker
        if df.status == "finished":
            fresh = [EvalResult(**r) for r in df.result()]
        elif df.status == "cancelled":
            raise SchedulerLost("the Dask scheduler connection was lost before the result came back")
        else:
            exc = df.exception()
            if not isinstance(exc, KilledWorker):
                raise exc  # a harness or data problem, not the candidate's: surface it
            fresh = [EvalResult("worker_lost", f"Dask gave the candidate up after its workers died: {exc}",
                                seed=s) for s in todo]
        complete(fut, self.cache, seeds, keys, cached, fresh)

    def _forget(self, fut: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending.discard(fut)

    def evaluate(self, code: str, seeds: Sequence[int] = (0,)) -> list[EvalResult]:
        """Blocking :meth:`submit`."""
        return self.submit(code, seeds).result()

    def close(self) -> None:
        """Wait for pending candidates, stop the workers' sandbox pools, disconnect
        (and stop the local cluster if this pool started it)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            pending = list(self._pending)
        concurrent.futures.wait(pending)
        self._shutdown()

    def _shutdown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            if self._registered and client.status == "running":
                try:
                    client.unregister_worker_plugin(self.plugin_name)
                except Exception:  # a plugin that never registered, or a worker gone meanwhile
                    pass
            client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> "DaskEvaluationPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_pool(cfg: Any, protect: Sequence[str] = (), **options: Any) -> DaskEvaluationPool:
    """The Dask executor of a RunConfig: ``cfg.executor.scheduler`` names a running
    scheduler; empty or ``"local"`` starts a local cluster of ``cfg.executor.workers``
    single-threaded worker processes. The data come from ``cfg.data`` (loaded on the
    workers), the proxy settings from ``cfg.proxy``; ``options`` go to
    :class:`DaskEvaluationPool` (``max_retries``, ``start_timeout``, ...)."""
    address = (cfg.executor.scheduler or "").strip()
    return DaskEvaluationPool(DatasetSpec.of_config(cfg), cfg.proxy,
                              scheduler=None if address in ("", "local") else address,
                              workers=cfg.executor.workers, protect=protect, **options)
