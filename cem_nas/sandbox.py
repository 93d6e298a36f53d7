"""Run untrusted candidate code (an LLM wrote it) in isolated, limited processes.

Layers, outermost first:

1. :func:`check_policy`, a static AST check run before anything executes: imports only
   from :data:`ALLOWED_MODULES`; no ``open``/``exec``/``eval``/``compile``/``__import__``/
   ``globals``...; no dunder attribute access beyond :data:`ALLOWED_DUNDERS`; no frame
   or code object attributes; no ``getattr``-family call with a dunder name.
2. A pool of warm *workers* (:class:`SandboxPool`), started with ``spawn`` so each is a
   fresh single-threaded interpreter that imports torch once, with numeric threads capped
   *before* any torch op (forking a process that has OpenMP threads can deadlock the child).
3. Per task the worker forks a *child* (:func:`run_child`): a fork costs milliseconds, an
   interpreter start with torch costs seconds. The child starts its own session (so a
   SIGKILL to its process group also ends anything it started), asks the kernel to kill
   it if the worker dies, closes every inherited descriptor but its result pipe, moves to
   an empty temporary directory, sets rlimits (address space, CPU time, no core files),
   and installs an audit hook (:func:`install_guards`) that refuses process spawning,
   signals to other processes, sockets, ctypes, and every file-system write.
4. The worker enforces a wall-clock deadline, reads at most :data:`MAX_OUTPUT_BYTES` of
   newline-delimited JSON from the child (never pickle: the child is untrusted), and
   reports how the child ended as a :class:`ChildOutcome`.

Known limits: this is defence in depth for code that is careless or confused, not a
container. A candidate shares the child process with the harness that scores it, so a
malicious candidate could forge its own score; root users are not limited by
RLIMIT_NPROC, so spawning is stopped by the audit hook and by disabling
``_posixsubprocess.fork_exec`` in the child rather than by the kernel.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import json
import os
import pickle
import queue
import resource
import select
import signal
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

#: Top-level modules candidate code may import (submodules of these are allowed too).
ALLOWED_MODULES = frozenset({"torch", "math", "typing", "collections", "functools", "dataclasses",
                             "__future__"})

#: Builtins that give file, code or namespace access; refused by name.
FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars",
    "breakpoint", "input", "help", "exit", "quit", "memoryview", "__builtins__", "__loader__",
    "__spec__", "__file__",
})

#: Dunder attributes a model file legitimately uses (``super().__init__(...)``).
ALLOWED_DUNDERS = frozenset({"__init__", "__name__", "__call__", "__len__", "__doc__"})

#: Attributes of frames, tracebacks, generators and code objects: the classic ways from
#: an object back to some module's globals.
FORBIDDEN_ATTRIBUTES = frozenset({
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame", "tb_next",
    "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code", "co_code",
    "func_globals",
})

#: getattr-family builtins: a constant dunder name passed to them is attribute access.
ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "delattr", "hasattr"})

#: Bytes a child may send back; more is treated as misbehaviour and the child is killed.
MAX_OUTPUT_BYTES = 1 << 20


class PolicyViolation(Exception):
    """Candidate code breaks the sandbox policy (statically or at run time).

    ``lineno`` is the 1-based line in the candidate source (0 when unknown), ``what`` the
    offending construct and ``why`` the rule it breaks.
    """

    def __init__(self, lineno: int, what: str, why: str) -> None:
        super().__init__(f"line {lineno}: {what}: {why}")
        self.lineno, self.what, self.why = lineno, what, why


class SandboxRefusal(PermissionError):
    """Raised inside a child when the audit hook or the import guard refuses an action."""


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _check_import(node: ast.AST, name: str, level: int = 0) -> None:
    if level:
        raise PolicyViolation(node.lineno, "relative import", "candidate code is a single file")
    root = name.split(".")[0]
    if root not in ALLOWED_MODULES:
        raise PolicyViolation(node.lineno, f"import {name}",
                              f"only {', '.join(sorted(ALLOWED_MODULES - {'__future__'}))} "
                              "and their submodules may be imported")


def check_policy(code: str) -> None:
    """Raise :class:`PolicyViolation` at the first construct the sandbox refuses.

    A :class:`SyntaxError` propagates unchanged (the caller reports ``syntax_error``).

    >>> check_policy("import torch.nn as nn\\nx = nn.Linear(2, 3)")
    >>> check_policy("import os")
    Traceback (most recent call last):
    ...
    cem_nas.sandbox.PolicyViolation: line 1: import os: only collections, dataclasses, functools, math, torch, typing and their submodules may be imported
    """
    tree = ast.parse(code, filename="<candidate>")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _check_import(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            _check_import(node, node.module or "", node.level)
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            raise PolicyViolation(node.lineno, node.id, "file, code and namespace access are refused")
        elif isinstance(node, ast.Name) and _is_dunder(node.id) and node.id not in ALLOWED_DUNDERS:
            raise PolicyViolation(node.lineno, node.id, "dunder names are refused")
        elif isinstance(node, ast.Attribute):
            if _is_dunder(node.attr) and node.attr not in ALLOWED_DUNDERS:
                raise PolicyViolation(node.lineno, f".{node.attr}",
                                      "dunder attribute access can reach interpreter internals")
            if node.attr in FORBIDDEN_ATTRIBUTES:
                raise PolicyViolation(node.lineno, f".{node.attr}",
                                      "frame and code attributes can reach module globals")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ATTRIBUTE_FUNCTIONS and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and (_is_dunder(node.args[1].value) or node.args[1].value in FORBIDDEN_ATTRIBUTES)
              and node.args[1].value not in ALLOWED_DUNDERS):
            raise PolicyViolation(node.lineno, f"{node.func.id}(..., {node.args[1].value!r})",
                                  "dunder attribute access can reach interpreter internals")


def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    """``__import__`` for candidate code: the static policy enforced again at run time,
    so an import name built dynamically cannot get past it."""
    if level or name.split(".")[0] not in ALLOWED_MODULES:
        _refuse(f"import {name}")
    return importlib.__import__(name, globals, locals, fromlist, level)


# ---------------------------------------------------------------------------------------
# Child-side guards

#: Audit-event prefixes refused outright in a child.
_REFUSED_PREFIXES = (
    "os.", "subprocess.", "socket.", "shutil.", "ctypes.", "pty.", "signal.", "mmap.",
    "fcntl.", "resource.", "urllib.", "http.", "ftplib.", "smtplib.", "poplib.", "imaplib.",
    "nntplib.", "telnetlib.", "webbrowser.", "sqlite3.", "_posixsubprocess.", "syslog.",
)
#: os.* events that only read (torch's lazy imports list directories).
_ALLOWED_OS_EVENTS = frozenset({"os.listdir", "os.scandir", "os.listxattr", "os.getxattr"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

#: Refusals seen in this process (a candidate may catch the exception; the harness
#: still reports the attempt). Only ever non-empty inside a child.
REFUSALS: list[str] = []
_emit_refusal: Callable[[str], None] | None = None
_protected_dirs: tuple[str, ...] = ()


def _refuse(what: str) -> None:
    REFUSALS.append(what)
    if _emit_refusal is not None:
        _emit_refusal(what)
    raise SandboxRefusal(f"{what} refused by the sandbox")


def _open_is_write(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if _open_is_write(mode, flags):
            _refuse(f"open({path!r}, mode={mode!r}) for writing")
        if isinstance(path, (str, bytes)) and _protected_dirs:
            full = os.path.abspath(os.fsdecode(path))
            if any(full == d or full.startswith(d + os.sep) for d in _protected_dirs):
                _refuse(f"open({path!r}) inside a protected directory")
    elif event.startswith(_REFUSED_PREFIXES) and event not in _ALLOWED_OS_EVENTS:
        _refuse(f"{event}{_short(args)}")


def _short(args: tuple) -> str:
    text = repr(tuple(args))
    return text if len(text) <= 120 else text[:117] + "..."


def _refuse_spawn(*args, **kwargs):
    _refuse("_posixsubprocess.fork_exec (process spawning)")


@dataclass
class Limits:
    """Resource limits for one child.

    ``memory_mb`` is address space the child may add on top of what it inherits from the
    warm worker (torch alone maps a few hundred MB); None disables the limit (needed for
    CUDA, which maps huge virtual ranges). ``cpu_s`` is CPU time (RLIMIT_CPU, all threads);
    ``timeout_s`` is wall-clock time enforced by the worker with SIGKILL.
    """

    timeout_s: float = 120.0
    cpu_s: int | None = None
    memory_mb: int | None = 2048
    threads: int = 1
    protect: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb is not None and self.memory_mb <= 0:
            raise ValueError(f"memory_mb must be > 0 or None, got {self.memory_mb}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _set_pdeathsig() -> None:
    """Ask the kernel to SIGKILL this child when the worker dies (Linux only)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Landlock (Linux >= 5.13): kernel-enforced, so it also stops native code (torch.save
# writes through C++, never through Python's open, so no audit event sees it).
_LANDLOCK_FS_WRITE = sum(1 << b for b in (0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # execute + all writes
_LANDLOCK_FS_BY_ABI = {2: 1 << 13, 3: 1 << 14, 5: 1 << 15}  # refer, truncate, ioctl on devices
_LANDLOCK_NET_TCP = 0b11  # bind, connect
_LANDLOCK_SCOPES = 0b11  # abstract unix sockets, signals to processes outside the sandbox
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_RESTRICT_SELF = 444, 446  # same on every arch


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unavailable."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return max(0, libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, 1))
    except (OSError, AttributeError):
        return 0


def _landlock_deny_writes() -> int:
    """Forbid this process and its descendants every file-system write, execve, TCP
    bind/connect and signals to outside processes (as far as the kernel's ABI knows them).
    Returns the ABI applied, 0 when Landlock is unavailable (the other layers remain)."""
    import ctypes
    abi = landlock_abi()
    if abi < 1:
        return 0
    fs = _LANDLOCK_FS_WRITE + sum(bit for v, bit in _LANDLOCK_FS_BY_ABI.items() if abi >= v)
    attr = (ctypes.c_uint64 * 3)(fs, _LANDLOCK_NET_TCP if abi >= 4 else 0, _LANDLOCK_SCOPES if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if fd < 0:
        return 0
    try:
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required by restrict_self
            return 0
        return abi if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, fd, 0) == 0 else 0
    finally:
        os.close(fd)


def install_guards(limits: Limits, keep_fds: tuple[int, ...], workdir: str,
                   emit_refusal: Callable[[str], None] | None = None) -> None:
    """Harden the current (child) process. Irreversible; call once, right after fork."""
    global _emit_refusal, _protected_dirs
    _set_pdeathsig()
    os.chdir(workdir)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    keep = sorted(set(keep_fds) | {0, 1, 2})
    for low, high in zip(keep, keep[1:] + [resource.getrlimit(resource.RLIMIT_NOFILE)[0]]):
        os.closerange(low + 1, high)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no byte reaches a file, whatever wrote it
    if limits.memory_mb is not None:
        cap = _vm_size_bytes() + limits.memory_mb * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    cpu = limits.cpu_s if limits.cpu_s is not None else int(limits.timeout_s * limits.threads) + 5
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 2))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(limits.threads)
    import torch
    torch.set_num_threads(limits.threads)
    import _posixsubprocess
    _posixsubprocess.fork_exec = _refuse_spawn
    _landlock_deny_writes()
    _emit_refusal = emit_refusal
    _protected_dirs = tuple(os.path.abspath(p) for p in limits.protect if os.path.abspath(p) != "/")
    sys.addaudithook(_audit)


@dataclass
class ChildOutcome:
    """How a child ended, as seen by its worker.

    ``messages``: the JSON objects the child sent, in order. ``exit_code`` is set when it
    exited, ``signal`` when a signal ended it; ``timed_out`` when the worker killed it at
    the wall-clock deadline; ``overflow`` when it sent more than MAX_OUTPUT_BYTES or
    malformed output.
    """

    messages: list[dict] = field(default_factory=list)
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    overflow: bool = False
    wall_s: float = 0.0

    def describe(self) -> str:
        """The way the child ended, in words (for status messages)."""
        if self.timed_out:
            return "killed at the wall-clock deadline"
        if self.overflow:
            return "killed for sending oversized or malformed output"
        if self.signal is not None:
            return f"killed by signal {signal.Signals(self.signal).name}"
        return f"exited with code {self.exit_code}"


def _kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _os_threads() -> int:
    """OS threads of this process (native ones included); 1 where /proc is missing."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def run_child(fn: Callable[..., None], args: tuple, limits: Limits, workdir: str) -> ChildOutcome:
    """Fork; in the child harden and call ``fn(*args, emit)``; wait at most
    ``limits.timeout_s`` seconds. ``emit(obj)`` sends one JSON-able object to the worker.

    Call only from a single-threaded process (a warm worker): a fork copies locks held
    by other threads without the threads that would release them.
    """
    threads = _os_threads()
    if threads > 1:
        raise RuntimeError(f"run_child needs a single-threaded process (this one has {threads} threads): "
                           "a fork copies locks held by other threads, and the child can hang on them; "
                           "use SandboxPool, whose workers stay single-threaded")
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(read_fd)
            os.setsid()

            def emit(obj: dict) -> None:
                data = (json.dumps(obj, default=str) + "\n").encode()
                while data:
                    data = data[os.write(write_fd, data):]

            install_guards(limits, (write_fd,), workdir,
                           emit_refusal=lambda what: emit({"refused": what}))
            fn(*args, emit)
        except BaseException:  # the harness failed: tell the worker, then leave
            code = 70
            try:
                emit({"harness_error": traceback.format_exc(limit=5)[-2000:]})
            except BaseException:
                pass
        finally:
            os._exit(code)
    os.close(write_fd)
    outcome = ChildOutcome()
    deadline = start + limits.timeout_s
    buf, size, status, reaped = b"", 0, 0, False
    try:
        open_pipe = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.timed_out = True
                break
            if open_pipe:
                ready, _, _ = select.select([read_fd], [], [], min(remaining, 0.5))
                if ready:
                    chunk = os.read(read_fd, 65536)
                    if not chunk:
                        open_pipe = False
                    size += len(chunk)
                    if size > MAX_OUTPUT_BYTES:
                        outcome.overflow = True
                        break
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        try:
                            msg = json.loads(line)
                        except ValueError:
                            msg = None
                        if not isinstance(msg, dict):
                            outcome.overflow = True
                            break
                        outcome.messages.append(msg)
                    if outcome.overflow:
                        break
                    continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                reaped = True
                break
            if not open_pipe:
                time.sleep(min(0.01, max(remaining, 0)))
    finally:
        os.close(read_fd)
        _kill_group(pid)
        if not reaped:
            _, status = os.waitpid(pid, 0)
    outcome.wall_s = time.monotonic() - start
    if os.WIFSIGNALED(status):
        outcome.signal = os.WTERMSIG(status)
    elif os.WIFEXITED(status):
        outcome.exit_code = os.WEXITSTATUS(status)
    if outcome.timed_out or outcome.overflow:
        outcome.signal = None
    return outcome


# ---------------------------------------------------------------------------------------
# Workers and the pool

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _thread_env(threads: int):
    """Thread-count variables set while a worker is spawned: the new interpreter's
    numeric libraries (OpenBLAS via numpy, OpenMP via torch) size their pools from them
    at import, before any code of ours runs."""
    with _ENV_LOCK:
        saved = {var: os.environ.get(var) for var in _THREAD_ENV}
        os.environ.update({var: str(threads) for var in _THREAD_ENV})
        try:
            yield
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value


def _resolve(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main(conn, init_ref: str, init_blob: bytes, handler_ref: str, threads: int) -> None:
    """A warm worker: single-threaded; serve (payload) -> handler result until None.

    ``init_blob`` is the pickled init arguments, unpickled only after the thread caps are
    set (unpickling numpy arrays imports numpy, which may start OpenBLAS threads)."""
    for var in _THREAD_ENV:
        os.environ[var] = str(threads)
    init_args = pickle.loads(init_blob)
    import torch
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    workdir = tempfile.mkdtemp(prefix="cem_nas_child_")
    try:
        try:
            state = _resolve(init_ref)(*init_args)
            handler = _resolve(handler_ref)
            del init_blob, init_args  # smaller worker, cheaper forks
        except Exception:
            conn.send(("failed", traceback.format_exc()))
            raise
        conn.send(("ready", os.getpid()))
        while True:
            try:
                payload = conn.recv()
            except EOFError:
                break
            if payload is None:
                break
            try:
                conn.send(("ok", handler(state, payload, workdir)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        try:
            os.rmdir(workdir)
        except OSError:
            pass
    # Nothing to flush; skip interpreter teardown (freeing torch and the dataset is slow).
    os._exit(0)


class WorkerLost(RuntimeError):
    """A worker died or stopped answering while serving a task (retries spent)."""


class _Worker:
    def __init__(self, ctx, spec: tuple) -> None:
        parent_conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child_conn, *spec), daemon=True)
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        self.pid = self.process.pid

    def wait_ready(self, timeout: float) -> "_Worker":
        """Block until the worker has imported torch and built its state."""
        try:
            if not self.conn.poll(timeout):
                raise WorkerLost(f"worker did not start within {timeout:.0f} s")
            tag, value = self.conn.recv()
        except (EOFError, OSError) as exc:
            tag, value = "died", f"{type(exc).__name__}: {exc}"
        except WorkerLost:
            self.kill()
            raise
        if tag != "ready":
            self.kill()
            raise WorkerLost(f"worker failed to start: {value}")
        return self

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def ask_stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass


class SandboxPool:
    """W warm workers, each serving one task at a time; a dead worker is replaced.

    ``init_ref``/``handler_ref`` name functions as ``"module:function"`` so a worker can
    cap its thread counts before the module (and torch) is imported. In each worker,
    ``state = init(*init_args)`` runs once; each task runs ``handler(state, payload,
    workdir)`` (which calls :func:`run_child` for the untrusted part) and its return value
    completes the future. A task whose worker dies is retried once on a fresh worker; then
    the future fails with :class:`WorkerLost`.
    """

    def __init__(self, init_ref: str, init_args: tuple, handler_ref: str, workers: int | None = None,
                 threads: int = 1, start_timeout: float = 180.0) -> None:
        import multiprocessing
        n = workers if workers is not None else max(1, (os.cpu_count() or 1) // threads)
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._ctx = multiprocessing.get_context("spawn")
        self._spec = (init_ref, pickle.dumps(init_args, protocol=pickle.HIGHEST_PROTOCOL), handler_ref, threads)
        self._start_timeout = start_timeout
        self._tasks: queue.Queue = queue.Queue()
        self._closed = False
        self._workers: list[_Worker | None] = [None] * n
        self._start_all()
        self._threads = [threading.Thread(target=self._serve, args=(i,), daemon=True,
                                          name=f"sandbox-dispatch-{i}") for i in range(n)]
        for t in self._threads:
            t.start()

    def _start_all(self) -> None:
        try:
            # Start all, then wait: the workers import torch in parallel.
            with _thread_env(self._spec[3]):
                for i in range(len(self._workers)):
                    self._workers[i] = _Worker(self._ctx, self._spec)
            for w in self._workers:
                w.wait_ready(self._start_timeout)
        except BaseException:
            for w in self._workers:
                if w is not None:
                    w.kill()
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
        with _thread_env(self._spec[3]):
            w = _Worker(self._ctx, self._spec)
        self._workers[i] = w.wait_ready(self._start_timeout)
        return w

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
                except (EOFError, OSError, WorkerLost) as exc:
                    reason = f"worker died ({type(exc).__name__}: {exc})"
                    try:
                        self._replace(i)
                    except WorkerLost as again:
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
        """Finish queued tasks, then stop the workers."""
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
            w.process.join(max(0.0, deadline - time.monotonic()))
            w.kill()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
