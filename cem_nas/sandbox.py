"""Run untrusted candidate code (an LLM wrote it) in isolated, limited processes.

Layers, outermost first:

1. The static policy (:func:`cem_nas.policy.check_policy`), an AST check run before
   anything executes.
2. A pool of warm *workers* (:class:`SandboxPool`, this module): each is a fresh
   interpreter started with ``python -I -c`` (never ``multiprocessing``, so it never
   re-imports the caller's ``__main__``: a script without a main guard works),
   single-threaded, with numeric threads capped *before* torch is imported (forking a
   process that has OpenMP threads can deadlock the child). Its initial state (the
   dataset) arrives as a file in a private temporary directory, never through a pipe
   whose reader may be gone. A worker that dies or fails before it is ready is a
   :class:`WorkerStartError` within seconds, saying how it ended, the end of its stderr
   and what to do.
3. Per task the worker forks a *child* and confines it (:func:`cem_nas.confinement.run_child`:
   its own session, rlimits, an audit hook, Landlock).
4. The worker enforces a wall-clock deadline, bounds and parses what the child sends
   (never pickle) and reports how it ended (:class:`cem_nas.confinement.ChildOutcome`).

Threat model (what a candidate is assumed to try, and what stops it)

The candidate is adversarial: it may monkeypatch anything it can reach (``torch.Tensor``
methods, ``torch.nn.functional``, optimizers, and through ``torch.sys.modules`` the
harness's own modules), catch exceptions, lie in everything it sends, and run native code
through torch. The guarantee is about the *score*: a candidate cannot raise it above what
its predictions earn. What confines the child itself (files, writes, processes, the
kernels and aliases it does not cover) is set out in :mod:`cem_nas.confinement`.

Defended:

- *Forging the score.* The process that runs candidate code computes no score. It
  returns raw predictions (one class index per test image, fixed dtype and length); the
  trusted side (:class:`cem_nas.evaluate.EvaluationPool`, in the run's process or a Dask
  worker process, neither of which ever runs candidate code) validates them (length,
  dtype, range) and computes accuracy and the status from them. Patching torch in the
  child can change only the child's own predictions.
- *Reading the answers.* Test labels never enter a process that runs candidate code:
  the warm worker (whose memory every child inherits) is never given them, and every
  file that holds them is unreadable from a child (:mod:`cem_nas.confinement`).
- *Reading the answers from the order.* A test split stored in a meaningful order (the
  bundled mnist5k is sorted by class: predicting ``10 * i // n`` for image ``i`` would
  score 100%) is shown to the worker in a secret order, a permutation seeded from a hash
  of the test labels, which the child cannot compute; predictions are scored in that order.
- *Lying about the rest.* Everything else a child reports (loss, timings, parameter and
  FLOP counts, its own status) is validated and bounded by the worker, and only accuracy
  enters selection. A child cannot report ``ok`` or ``low_accuracy``: those are decided
  from the predictions.
- *Breaking out or breaking others*: see :mod:`cem_nas.confinement`.

Not defended (by design or out of reach):

- A candidate may implement any classifier computable from what it legitimately holds:
  the training split with its labels and the test *images* (transductive tricks, a
  nearest-neighbour lookup into the training set). That is generalisation, scored
  fairly, not forgery; exact copies of training images in the test split would reward
  memorisation, so the pool counts them and warns (0 of 1,000 in mnist5k).
- What the child's confinement does not cover (kernels without Landlock, aliases of
  protected paths, patched Python-level guards): :mod:`cem_nas.confinement`.
- Side channels (timing, CPU contention with other candidates) and denial of service
  within the limits are out of scope.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import weakref
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from cem_nas.confinement import THREAD_ENV, Confinement, landlock_abi

#: How a worker interpreter starts: the parent's import path, then the worker loop. Not
#: multiprocessing's spawn: that re-imports the parent's ``__main__``, which fails without
#: a main guard and would run whatever a script does at module level (load the test
#: labels, say) in a process whose memory every child inherits.
_BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
         "from cem_nas.sandbox import _worker_main; _worker_main(int(sys.argv[2]), sys.argv[3])")


def _resolve(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main(fd: int, spec_path: str) -> None:
    """A warm worker: single-threaded; serve (payload) -> handler result until None or EOF.

    The thread caps come from the environment (set before this interpreter imported
    anything). ``spec_path`` holds (init_ref, init_args, handler_ref, threads, protect),
    pickled by the pool into its private directory."""
    conn = Connection(fd)
    try:
        with open(spec_path, "rb") as fh:
            init_ref, init_args, handler_ref, threads, protect = pickle.load(fh)
        import torch
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        state = _resolve(init_ref)(*init_args)
        handler = _resolve(handler_ref)
        del init_args  # smaller worker, cheaper forks
        workdir = tempfile.mkdtemp(prefix="cem_nas_child_")
        confinement = Confinement.build(protect)  # after mkdtemp: the workdir must stay readable
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
        raise
    try:
        conn.send(("ready", os.getpid()))
        while True:
            try:
                payload = conn.recv()
            except (EOFError, OSError):  # the pool went away
                break
            if payload is None:
                break
            try:
                reply = ("ok", handler(state, payload, workdir, confinement))
            except Exception:
                reply = ("error", traceback.format_exc())
            try:
                conn.send(reply)
            except OSError:
                break
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(workdir)
    # Nothing to flush; skip interpreter teardown (freeing torch and the dataset is slow).
    os._exit(0)


class WorkerLost(RuntimeError):
    """A worker died or stopped answering while serving a task (retries spent)."""


class WorkerStartError(RuntimeError):
    """A sandbox worker died, failed or hung before it was ready; the message says how,
    quotes the end of its stderr and what to do."""


def _advice(ending: str, log: str) -> str:
    if "SIGKILL" in ending:
        return ("it was probably killed for memory (the kernel's OOM killer): start fewer workers "
                "(executor.workers) or use a smaller dataset (data.max_train)")
    if "ModuleNotFoundError" in log or "ImportError" in log:
        return (f"an import failed: check that `{sys.executable} -c 'import torch, cem_nas.evaluate'` "
                "works in this environment (./install.sh)")
    if "did not report" in ending:
        return ("the machine may be overloaded or short of memory (importing torch and loading the data "
                "took that long); raise start_timeout or start fewer workers")
    return f"see its stderr above; `{sys.executable} -c 'import torch, cem_nas.evaluate'` reproduces import problems"


class _Worker:
    def __init__(self, index: int, home: str, spec_path: str, threads: int) -> None:
        ours, theirs = _socketpair()
        self.log_path = os.path.join(home, f"worker-{index}.log")
        env = dict(os.environ, **{var: str(threads) for var in THREAD_ENV})
        self.started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, json.dumps(sys.path), str(theirs), spec_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(theirs,), env=env,
                start_new_session=True)
        os.close(theirs)
        self.conn = Connection(ours)
        self.pid = self.process.pid

    def log_tail(self, chars: int = 1500) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(self.log_path) - chars))
                return fh.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def ending(self) -> str:
        """How the process ended, in words (waits up to 5 s for it to finish dying)."""
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            return "stopped answering (still running)"
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def wait_ready(self, timeout: float) -> "_Worker":
        """Block until the worker has imported torch and built its state; a worker that
        died or failed meanwhile raises :class:`WorkerStartError` at once."""
        deadline = self.started + timeout
        tag, value = "", ""
        try:
            while not self.conn.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    tag = "hung"
                    break
            else:
                tag, value = self.conn.recv()
        except (EOFError, OSError):
            tag = "died"
        if tag == "ready":
            return self
        after = f"after {time.monotonic() - self.started:.1f} s"
        if tag == "hung":
            self.kill()
            ending = f"did not report ready within {timeout:.0f} s"
        elif tag == "failed":
            ending = f"failed to build its state ({after}):\n{str(value)[-1500:]}"
        else:
            ending = f"{self.ending()} before it was ready ({after})"
        self.kill()
        log = self.log_tail()
        raise WorkerStartError(f"sandbox worker (pid {self.pid}) {ending}"
                               + (f"\nits stderr ended with:\n{log}" if log and tag != "failed" else "")
                               + f"\nwhat to do: {_advice(ending, log + str(value))}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.conn.close()

    def ask_stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)


def _socketpair() -> tuple[int, int]:
    import socket
    a, b = socket.socketpair()
    return a.detach(), b.detach()


class SandboxPool:
    """W warm workers, each serving one task at a time; a dead worker is replaced.

    ``init_ref``/``handler_ref`` name functions as ``"module:function"`` so a worker can
    cap its thread counts before the module (and torch) is imported. In each worker,
    ``state = init(*init_args)`` runs once; each task runs ``handler(state, payload,
    workdir, confinement)`` (which calls :func:`cem_nas.confinement.run_child` for the
    untrusted part) and its return value completes the future. A task whose worker dies is retried once on a fresh
    worker; then the future fails with :class:`WorkerLost`. ``protect``: paths children
    may not read (the pool's own directory, holding ``init_args``, is added).

    ``init_args`` travel as a file in a private temporary directory (mode 0700, removed
    at :meth:`close`). A worker that cannot start raises :class:`WorkerStartError`.
    """

    def __init__(self, init_ref: str, init_args: tuple, handler_ref: str, workers: int | None = None,
                 threads: int = 1, start_timeout: float = 180.0, protect: Sequence[str] = ()) -> None:
        n = workers if workers is not None else max(1, (os.cpu_count() or 1) // threads)
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if landlock_abi() < 1:
            warnings.warn("this kernel has no Landlock: candidates' native code (torch.from_file, torch.save) "
                          "is not stopped from reading protected files or writing; Python-level reads and "
                          "writes are still refused", RuntimeWarning, stacklevel=2)
        self._home = tempfile.mkdtemp(prefix="cem_nas_pool_")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._home, True)
        self._spec_path = os.path.join(self._home, "init.pkl")
        with open(self._spec_path, "wb") as fh:
            pickle.dump((init_ref, init_args, handler_ref, threads, (*protect, self._home)), fh,
                        protocol=pickle.HIGHEST_PROTOCOL)
        self._threads_per_worker = threads
        self._start_timeout = start_timeout
        self._tasks: queue.Queue = queue.Queue()
        self._closed = False
        self._started = 0
        self._workers: list[_Worker | None] = [None] * n
        self._start_all()
        self._threads = [threading.Thread(target=self._serve, args=(i,), daemon=True,
                                          name=f"sandbox-dispatch-{i}") for i in range(n)]
        for t in self._threads:
            t.start()

    def _new_worker(self) -> _Worker:
        self._started += 1
        return _Worker(self._started, self._home, self._spec_path, self._threads_per_worker)

    def _start_all(self) -> None:
        try:
            # Start all, then wait: the workers import torch in parallel.
            for i in range(len(self._workers)):
                self._workers[i] = self._new_worker()
            for w in self._workers:
                w.wait_ready(self._start_timeout)
        except BaseException:
            for w in self._workers:
                if w is not None:
                    w.kill()
            self._cleanup()
            raise

    @property
    def size(self) -> int:
        return len(self._workers)

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (tests kill one to check replacement)."""
        return [w.pid for w in self._workers if w is not None]

    def submit(self, payload: Any, deadline_s: float) -> Future:
        """Queue ``payload``; the worker must answer within ``deadline_s`` seconds."""
        if self._closed:
            raise RuntimeError("the pool is closed; create a new one")
        fut: Future = Future()
        self._tasks.put((payload, deadline_s, fut))
        return fut

    def _replace(self, i: int) -> _Worker:
        old = self._workers[i]
        if old is not None:
            old.kill()
        self._workers[i] = None
        self._workers[i] = self._new_worker().wait_ready(self._start_timeout)
        return self._workers[i]

    def _serve(self, i: int) -> None:
        while True:
            item = self._tasks.get()
            if item is None:
                return
            payload, deadline_s, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            reason = ""
            for _attempt in range(2):
                try:
                    w = self._workers[i]
                    if w is None or not w.alive():
                        w = self._replace(i)
                    w.conn.send(payload)
                    if not w.conn.poll(deadline_s):
                        reason = f"worker gave no answer within {deadline_s:.0f} s"
                        self._replace(i)
                        continue
                    tag, value = w.conn.recv()
                except (EOFError, OSError, WorkerStartError) as exc:
                    reason = f"worker died ({type(exc).__name__}: {exc})"
                    try:
                        self._replace(i)
                    except WorkerStartError as again:
                        reason += f"; restart failed: {again}"
                    continue
                if tag == "ok":
                    fut.set_result(value)
                else:
                    fut.set_exception(RuntimeError(f"sandbox handler failed:\n{value}"))
                break
            else:
                fut.set_exception(WorkerLost(reason))

    def close(self) -> None:
        """Finish queued tasks, then stop the workers and remove the pool's directory."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join()
        live = [w for w in self._workers if w is not None]
        for w in live:
            w.ask_stop()
        deadline = time.monotonic() + 5
        for w in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.process.wait(max(0.0, deadline - time.monotonic()))
            w.kill()
        self._cleanup()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
