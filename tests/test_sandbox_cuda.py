"""CUDA and the sandbox's forks.

A process that has touched CUDA cannot use it in a child it forks ("Cannot re-initialize
CUDA in forked subprocess"), and with a CUDA build of torch ``torch.cuda.is_available()``
alone poisons later forks. With ``proxy.device = cuda`` candidates train on the GPU in
children forked from warm sandbox workers, while the run's own process has touched CUDA
(preflight asks torch whether CUDA is there; an LLM sampler runs on it). So the workers
must not be forks of the run's process (they are fresh interpreters: fork + exec), and a
worker must never touch CUDA itself (``worker_init`` gets the device but does not use it):
then each child initialises CUDA after its own fork. The test holds both on a CPU machine:
torch's fork-poisoning flag is set by ``is_available()`` whether or not a GPU is there.
"""
import dataclasses
import os

import torch
from candidates import BASE
from test_sandbox import tiny_dataset

from cem_nas import preflight
from cem_nas.config import RunConfig
from cem_nas.confinement import Limits, run_child
from cem_nas.evaluate import EvalSettings
from cem_nas.sandbox import SandboxPool


def cuda_state() -> dict:
    return {"poisoned": torch.cuda._is_in_bad_fork(), "initialised": torch.cuda.is_initialized()}


def _child_cuda_state(emit) -> None:  # in a sandbox child
    emit(cuda_state())


def probe_handle(state, payload, workdir, confinement) -> dict:
    """The real handler on a candidate (the payload's settings: device cuda), then the CUDA
    state of the worker and of a child it forks next."""
    from cem_nas.proxy_run import worker_handle

    results = worker_handle(state, payload, workdir, confinement)
    outcome = run_child(_child_cuda_state, (), Limits(timeout_s=30), workdir, confinement)
    child = outcome.messages[0] if outcome.messages else {"ended": outcome.describe()}
    return {"worker": cuda_state(), "child": child, "statuses": [r["status"] for r, _ in results]}


def _plain_fork_is_poisoned() -> bool:
    pid = os.fork()
    if pid == 0:
        os._exit(int(torch.cuda._is_in_bad_fork()))
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 1


def test_a_run_process_that_asked_torch_about_cuda_does_not_poison_the_sandbox_children():
    cfg = RunConfig()
    cfg.sampler.kind, cfg.proxy.device = "grammar", "cuda"
    preflight.device_problems(cfg)  # asks torch.cuda.is_available(), as the run's preflight does
    if torch.cuda._is_compiled():  # the probe is sensitive: a plain fork of this process is poisoned now
        assert _plain_fork_is_poisoned()
    data = tiny_dataset()
    arrays = {k: getattr(data, k).numpy() for k in ("x_train", "y_train", "x_test")}
    settings = dataclasses.asdict(EvalSettings(device="cuda", timeout_s=60))
    with SandboxPool("cem_nas.proxy_run:worker_init", (arrays, data.num_classes, "cuda"),
                     "test_sandbox_cuda:probe_handle", workers=1) as pool:
        seen = pool.submit({"code": BASE, "seeds": [0], "settings": settings}, deadline_s=120).result()
    assert not torch.cuda.is_initialized()  # preflight asks, it does not initialise
    assert seen["worker"] == {"poisoned": False, "initialised": False}, seen
    assert seen["child"] == {"poisoned": False, "initialised": False}, seen
    if torch.cuda.is_available():  # on a GPU machine the candidate trained there
        assert seen["statuses"] == ["trained"], seen
