"""The Dask executor: same results as the local pool, workers killed mid-evaluation,
hostile candidates contained on a worker, a lost scheduler stops cleanly.

The cluster tests start a LocalCluster of 2 single-threaded worker processes on loopback
(each with its own warm sandbox process): tens of seconds on a shared 2-core box, so
they are marked slow. The default part checks arguments, data identity and the
unreachable-scheduler path without starting a cluster.
"""
import collections
import concurrent.futures
import math
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
import torch

from cem_nas import mutations, zoo
from cem_nas.config import RunConfig
from cem_nas.data import load_dataset
from cem_nas.distributed import DaskEvaluationPool, DatasetMismatch, DatasetSpec, SchedulerLost, dataset_fingerprint, make_pool
from cem_nas.evaluate import EvalSettings, EvaluationPool
from candidates import BASE, hostile

torch.set_num_threads(1)

SPEC = DatasetSpec("mnist5k", max_train=300, max_test=200)
SETTINGS = EvalSettings(timeout_s=60)

def with_init(line: str) -> str:
    """The shared valid candidate with one hostile or slow line in ``__init__``."""
    return hostile("INIT", line)


def sleeper(seconds: float) -> str:
    """A valid candidate that spends ``seconds`` asleep while being built."""
    return with_init(f"torch.importlib.import_module('time').sleep({seconds})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ no cluster needed

def test_rejects_bad_arguments_before_starting_anything():
    with pytest.raises(TypeError, match="DatasetSpec"):
        DaskEvaluationPool("mnist5k")
    for kwargs in ({"workers": 0}, {"threads_per_worker": 0}, {"max_retries": -1}, {"min_workers": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            DaskEvaluationPool(SPEC, **kwargs)


def test_unreachable_scheduler_is_scheduler_lost():
    start = time.monotonic()
    with pytest.raises(SchedulerLost, match="cannot reach"):
        DaskEvaluationPool(SPEC, scheduler=f"tcp://127.0.0.1:{free_port()}", start_timeout=2)
    assert time.monotonic() - start < 30


def test_make_pool_reads_the_run_config():
    cfg = RunConfig()
    cfg.executor.scheduler = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(SchedulerLost, match=cfg.executor.scheduler):
        make_pool(cfg, start_timeout=2)
    spec = DatasetSpec.of_config(cfg)
    assert (spec.name, spec.max_train, spec.max_test, spec.seed) == (
        cfg.data.dataset, cfg.data.max_train or None, cfg.data.max_test or None, cfg.run.seed)
    assert spec.root is None and spec.resize is None  # "" and 0 mean "default" ("all" for sizes) in the config


def test_fingerprint_tells_datasets_apart():
    a = load_dataset("digits", max_train=100, max_test=50)
    b = load_dataset("digits", max_train=100, max_test=50)
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    b.y_test[0] = (b.y_test[0] + 1) % 10
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    c = load_dataset("digits", max_train=100, max_test=50, seed=1)
    assert dataset_fingerprint(a) != dataset_fingerprint(c)


def test_candidates_waiting_for_a_slot_fail_when_the_scheduler_is_gone():
    # the pool holds back candidates beyond the cluster's slots; when the client has lost
    # its scheduler they must fail with SchedulerLost at the next dispatch, not wait forever
    class LostClient:
        status = "closed"

        def scheduler_info(self, n_workers=0):
            raise OSError("no scheduler")

    pool = object.__new__(DaskEvaluationPool)
    pool._client, pool._lock, pool._running = LostClient(), threading.Lock(), 2
    pool._slots_known, pool._slots_at = 2, float("-inf")
    waiting = [concurrent.futures.Future() for _ in range(3)]
    pool._waiting = collections.deque((f, "code", [0], ["k"], {0: None}, [0]) for f in waiting)
    pool._dispatch()
    for fut in waiting:
        with pytest.raises(SchedulerLost, match="scheduler is gone"):
            fut.result(timeout=1)
    assert not pool._waiting


# ------------------------------------------------------------------ on a local cluster

@pytest.fixture(scope="module")
def local_pool():
    with EvaluationPool(SPEC.load(), SETTINGS, workers=2) as pool:
        yield pool


@pytest.fixture(scope="module")
def dask_pool():
    with DaskEvaluationPool(SPEC, SETTINGS, workers=2) as pool:
        yield pool


def comparable(results):
    """What must agree between executors (NaN, meaning "none", as None so it compares)."""
    def value(x):
        return None if isinstance(x, float) and math.isnan(x) else x
    return [(r.status, r.message, value(r.accuracy), value(r.loss), r.params, r.flops, r.seed) for r in results]


def candidates() -> dict[str, str]:
    mlp, plain = zoo.source("mlp"), zoo.source("plainnet")
    return {
        "mlp": mlp,
        "plainnet": plain,
        "plainnet width x2, GELU": mutations.render(plain, {"width": "x2", "activation": "GELU"}),
        "mlp dropout 0.5, Adam": mutations.render(mlp, {"dropout": "0.5", "optimizer": "Adam"}),
        "syntax error": plain.replace("def forward", "def forward(", 1),
        "build error": BASE.replace("class Net", "class NotNet"),
        "shape error": BASE.replace("out_shape[0])", "out_shape[0] + 1)"),
    }


@pytest.mark.slow
def test_same_results_as_the_local_pool(local_pool, dask_pool):
    codes = candidates()
    local = {name: local_pool.submit(code, (0, 1)) for name, code in codes.items()}
    remote = {name: dask_pool.submit(code, (0, 1)) for name, code in codes.items()}
    for name in codes:
        got, want = remote[name].result(timeout=600), local[name].result(timeout=600)
        # one machine, one torch, one thread per candidate: equal to the last bit
        assert comparable(got) == comparable(want), name
    statuses = {name: remote[name].result()[0].status for name in codes}
    assert statuses["syntax error"] == "syntax_error" and statuses["build error"] == "build_error"
    assert statuses["shape error"] == "shape_error"
    assert {statuses["mlp"], statuses["plainnet"]} <= {"ok", "low_accuracy"}
    # the cache keys agree with the local pool's, and a cached candidate needs no task
    assert dask_pool.key(codes["mlp"], 0) == local_pool.key(codes["mlp"], 0)
    hits = dask_pool.cache.hits
    assert comparable(dask_pool.evaluate(codes["mlp"], (1, 0))) == comparable(local["mlp"].result()[::-1])
    assert dask_pool.cache.hits == hits + 2


@pytest.mark.slow
def test_hostile_candidates_are_contained_on_the_worker(local_pool, dask_pool):
    pids = dask_pool.worker_pids()
    hostile = {
        "kill the parent": with_init("torch.os.kill(torch.os.getppid(), 9)"),
        "kill the process group": with_init("torch.os.killpg(0, 9)"),
        "huge tensor": with_init("self.big = torch.empty(2**40)"),
        "exit": with_init("torch.os._exit(3)"),
        "read the cached labels": with_init(f"torch.load({SPEC.load().info['cache_file']!r})"),
        "native read of the labels": with_init(f"torch.from_file({SPEC.load().info['cache_file']!r}, size=8)"),
    }
    remote = {name: dask_pool.submit(code) for name, code in hostile.items()}
    for name, code in hostile.items():
        got = remote[name].result(timeout=600)
        # messages name process ids; the statuses must agree
        assert [r.status for r in got] == [r.status for r in local_pool.evaluate(code)], name
        assert got[0].status in ("policy_violation", "memory_error", "build_error"), (name, got[0])
    assert dask_pool.worker_pids() == pids  # no Dask worker died or was restarted
    assert dask_pool.evaluate(with_init("self.k = 1"))[0].status in ("ok", "low_accuracy")


@pytest.mark.slow
def test_forged_score_is_the_honest_one_on_the_worker(local_pool, dask_pool):
    """Scores are computed by the Dask worker process from predictions, as locally."""
    forged = with_init("torch.Tensor.sum = lambda self, *a, **k: torch.tensor(4000.0)")
    got, honest = dask_pool.evaluate(forged)[0], local_pool.evaluate(BASE)[0]
    assert (got.status, got.accuracy) == (honest.status, honest.accuracy) and 0 < got.accuracy < 1


@pytest.mark.slow
def test_a_pool_that_cannot_start_on_the_workers_says_why_within_seconds():
    start = time.monotonic()
    with pytest.raises(Exception, match="exceeds") as info:
        DaskEvaluationPool(DatasetSpec("mnist5k", max_train=10**6), SETTINGS, workers=1, start_timeout=120)
    assert time.monotonic() - start < 60, str(info.value)


@pytest.mark.slow
def test_no_candidate_waits_on_a_busy_worker_while_another_idles(dask_pool):
    # the pool sends one task per sandbox slot and keeps the rest back, so each worker
    # takes the next candidate when it frees up (as the local pool's workers do)
    before = evaluated_per_worker(dask_pool)
    futures = [dask_pool.submit(sleeper(1.0) + f"\nBATCH = {i}\n") for i in range(6)]
    most = 0
    while not all(f.done() for f in futures):
        most = max(most, sum(len(keys) for keys in dask_pool._client.processing().values()))
        time.sleep(0.05)
    assert 1 <= most <= dask_pool.workers == 2
    assert all(f.result()[0].status in ("ok", "low_accuracy") for f in futures)
    after = evaluated_per_worker(dask_pool)
    ran = {addr: after[addr] - before.get(addr, 0) for addr in after}
    assert sum(ran.values()) == 6 and min(ran.values()) >= 2, ran


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_short_grammar_run_equals_the_local_run(tmp_path):
    from cem_nas.cem import run_search
    from cem_nas.config import apply_overrides
    from cem_nas.store import load

    def run(executor: str):
        cfg = apply_overrides(RunConfig(), {
            "run.name": executor, "run.runs_dir": str(tmp_path), "run.progress": "false", "sampler.kind": "grammar",
            "data.max_train": "300", "data.max_test": "200", "search.cycles": "2", "search.candidates": "6",
            "search.replicate_candidates": "2", "search.replicate_seeds": "2", "executor.kind": executor,
            "executor.workers": "2"})
        return load(run_search(cfg))

    local, remote = run("local"), run("dask")
    for name in ("status", "code", "score", "rep_score", "params", "flops", "is_elite", "gamma", "p_E"):
        a, b = local[name].values, remote[name].values
        same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
        assert same.all(), name
    assert (local.status.values == "ok").any()


def evaluated_per_worker(pool) -> dict[str, int]:
    name = pool.plugin_name
    return pool._client.run(lambda dask_worker: dask_worker.plugins[name].evaluated)


def kill_worker_running(pool, fut_started_after: float) -> str:
    """SIGKILL the Dask worker process that is evaluating the (only) running task once it
    has been running ``fut_started_after`` seconds; returns its address."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        busy = [addr for addr, keys in pool._client.processing().items() if keys]
        if busy:
            time.sleep(fut_started_after)
            os.kill(pool.worker_pids()[busy[0]], signal.SIGKILL)
            return busy[0]
        time.sleep(0.1)
    raise AssertionError("no worker started the task within 300 s")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_worker_candidate_completes_elsewhere_once(local_pool):
    code = sleeper(8)
    with DaskEvaluationPool(SPEC, SETTINGS, workers=2, max_retries=1) as pool:
        fut = pool.submit(code)
        kill_worker_running(pool, 3)
        got = fut.result(timeout=600)
        assert comparable(got) == comparable(local_pool.evaluate(code))
        # exactly one completed evaluation over the cluster: the killed one never finished,
        # the retry finished once
        pool._client.wait_for_workers(2, timeout=300)
        assert sum(evaluated_per_worker(pool).values()) == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_worker_lost_after_retries_then_scheduler_lost():
    code = sleeper(8)
    pool = DaskEvaluationPool(SPEC, SETTINGS, workers=2, max_retries=0)
    try:
        fut = pool.submit(code)
        kill_worker_running(pool, 3)
        (got,) = fut.result(timeout=600)
        assert got.status == "worker_lost" and "workers died" in got.message
        assert len(pool.cache) == 0  # a lost evaluation says nothing about the candidate

        # the scheduler goes away while a candidate is out: the future and later submits
        # fail with SchedulerLost, and closing the pool still works
        # (three candidates on two slots: one still waits in the pool, not at the scheduler)
        pending = [pool.submit(sleeper(20) + f"\nP = {i}\n") for i in range(3)]
        time.sleep(1)
        pool._cluster.sync(pool._cluster.scheduler.close)
        for fut in pending:
            with pytest.raises(SchedulerLost):
                fut.result(timeout=120)
        deadline = time.monotonic() + 60
        while pool._client.status == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(SchedulerLost):
            pool.submit(with_init("self.k = 2"))
    finally:
        pool.close()


@pytest.mark.slow
def test_a_worker_with_other_data_refuses_the_task(dask_pool):
    # a worker whose data differ from those the pool checked at start (another data root,
    # say) must fail the task instead of scoring on other data
    right = dask_pool._fingerprint
    dask_pool._fingerprint = "0" * 64
    try:
        with pytest.raises(DatasetMismatch, match="differ from the run's"):
            dask_pool.evaluate(with_init("self.k = 3"))
    finally:
        dask_pool._fingerprint = right
