"""Run untrusted candidate code (an LLM wrote it) in isolated, limited processes.

Layers, outermost first:

1. :func:`check_policy`, a static AST check run before anything executes: imports only
   from :data:`ALLOWED_MODULES`; no ``open``/``exec``/``eval``/``compile``/``__import__``/
   ``globals``...; no dunder attribute access beyond :data:`ALLOWED_DUNDERS`; no frame
   or code object attributes; no ``getattr``-family call with a dunder name.
2. A pool of warm *workers* (:class:`SandboxPool`): each is a fresh interpreter started
   with ``python -I -c`` (never ``multiprocessing``, so it never re-imports the caller's
   ``__main__``: a script without a main guard works), single-threaded, with numeric
   threads capped *before* torch is imported (forking a process that has OpenMP threads
   can deadlock the child). Its initial state (the dataset) arrives as a file in a private
   temporary directory, never through a pipe whose reader may be gone. A worker that dies
   or fails before it is ready is a :class:`WorkerStartError` within seconds, saying how it
   ended, the end of its stderr and what to do.
3. Per task the worker forks a *child* (:func:`run_child`): a fork costs milliseconds, an
   interpreter start with torch costs seconds. The child starts its own session (so a
   SIGKILL to its process group also ends anything it started), asks the kernel to kill
   it if the worker dies, closes every inherited descriptor but its result pipe, moves to
   an empty temporary directory, sets rlimits (address space, CPU time, file size 0, no
   core files), and installs an audit hook (:func:`install_guards`) that refuses process
   spawning, signals to other processes, sockets, ctypes, every file-system write and any
   read inside a protected path. Then Landlock (Linux >= 5.13, kernel-enforced, so it
   also binds native code): no file-system write, no execve, no reading a file under a
   protected path, no TCP bind/connect, no signals or ptrace (hence no ``/proc/<pid>/mem``)
   to processes outside the child.
4. The worker enforces a wall-clock deadline, reads at most :data:`MAX_OUTPUT_BYTES` (plus
   the size of the predictions it expects) of newline-delimited JSON from the child (never
   pickle: the child is untrusted), and reports how the child ended as a
   :class:`ChildOutcome`.

Threat model (what a candidate is assumed to try, and what stops it)

The candidate is adversarial: it may monkeypatch anything it can reach (``torch.Tensor``
methods, ``torch.nn.functional``, optimizers, and through ``torch.sys.modules`` the
harness's own modules), catch exceptions, lie in everything it sends, and run native code
through torch. The guarantee is about the *score*: a candidate cannot raise it above what
its predictions earn.

Defended:

- *Forging the score.* The process that runs candidate code computes no score. It
  returns raw predictions (one class index per test image, fixed dtype and length); the
  trusted side (:class:`cem_nas.evaluate.EvaluationPool`, in the run's process or a Dask
  worker process, neither of which ever runs candidate code) validates them (length,
  dtype, range) and computes accuracy and the status from them. Patching torch in the
  child can change only the child's own predictions.
- *Reading the answers.* Test labels never enter a process that runs candidate code:
  the warm worker (whose memory every child inherits) is never given them, and every
  file that holds them (the dataset cache under ``$CEM_NAS_CACHE``, the raw dataset
  files, the run directory, the worker's own start-up file) is unreadable from a child
  (audit hook for Python reads, Landlock for native ones such as ``torch.from_file``).
  The scoring process's memory is out of reach (Landlock refuses ptrace, which guards
  ``/proc/<pid>/mem``).
- *Reading the answers from the order.* A test split stored in a meaningful order (the
  bundled mnist5k is sorted by class: predicting ``10 * i // n`` for image ``i`` would
  score 100%) is shown to the worker in a secret order, a permutation seeded from a hash
  of the test labels, which the child cannot compute; predictions are scored in that order.
- *Lying about the rest.* Everything else a child reports (loss, timings, parameter and
  FLOP counts, its own status) is validated and bounded by the worker, and only accuracy
  enters selection. A child cannot report ``ok`` or ``low_accuracy``: those are decided
  from the predictions.
- *Breaking out or breaking others.* Writes, process creation, sockets, signals, memory
  and time are limited as above; every child is a fresh fork, so nothing it patches
  survives it; a child that kills itself, hangs or floods its pipe gets a status and the
  worker carries on.

Not defended (by design or out of reach):

- A candidate may implement any classifier computable from what it legitimately holds:
  the training split with its labels and the test *images* (transductive tricks, a
  nearest-neighbour lookup into the training set). That is generalisation, scored
  fairly, not forgery; exact copies of training images in the test split would reward
  memorisation, so the pool counts them and warns (0 of 1,000 in mnist5k).
- Kernels without Landlock (the pool warns): Python-level reads of protected paths are
  still refused, but native readers (``torch.from_file``, ``torch.jit.load``) are not,
  nor is the scoring process's memory (``/proc/<pid>/mem``, unless Yama's
  ``ptrace_scope`` >= 1), nor native writes beyond RLIMIT_FSIZE's zero bytes.
- Aliases the walk cannot see: a hard link or a bind mount of a protected file or
  directory's *inside* placed elsewhere stays readable. The Python-level guards (audit
  hook, import guard, the refusal record) can be disabled by a candidate that patches
  their helpers; the kernel layers and the process boundary cannot. Root users are not
  limited by RLIMIT_NPROC, so spawning is stopped by the audit hook, by disabling
  ``_posixsubprocess.fork_exec`` in the child and by Landlock's execve refusal. Side
  channels (timing, CPU contention with other candidates) and denial of service within
  the limits are out of scope. This is not a container: a kernel exploit escapes it.
"""
from __future__ import annotations

import ast
import contextlib
import ctypes
import importlib
import json
import os
import pickle
import queue
import resource
import select
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
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

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
#: still reports the attempt, and each one is sent to the worker as it happens).
#: Only ever non-empty inside a child.
REFUSALS: list[str] = []
_refuse_now: Callable[[str], None] | None = None


def _refuse(what: str) -> None:
    if _refuse_now is None:
        raise SandboxRefusal(f"{what} refused by the sandbox")
    _refuse_now(what)


def _short(args: tuple) -> str:
    text = repr(tuple(args))
    return text if len(text) <= 120 else text[:117] + "..."


def _make_guards(protected: tuple[str, ...], emit_refusal: Callable[[str], None] | None):
    """(refuse, audit hook) for a child. Everything they use is bound here, so a candidate
    that patches this module's or ``os``'s attributes does not change what they do."""
    record, abspath, fsdecode, sep = REFUSALS.append, os.path.abspath, os.fsdecode, os.sep
    refused_prefixes, allowed_os, write_flags = _REFUSED_PREFIXES, _ALLOWED_OS_EVENTS, _WRITE_FLAGS

    def refuse(what: str) -> None:
        record(what)
        if emit_refusal is not None:
            emit_refusal(what)
        raise SandboxRefusal(f"{what} refused by the sandbox")

    def audit(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & write_flags):
                refuse(f"open({path!r}, mode={mode!r}) for writing")
            if isinstance(path, (str, bytes)) and protected:
                full = abspath(fsdecode(path))
                if any(full == d or full.startswith(d + sep) for d in protected):
                    refuse(f"open({path!r}) inside a protected path")
        elif event.startswith(refused_prefixes) and event not in allowed_os:
            refuse(f"{event}{_short(args)}")

    return refuse, audit


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


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _set_pdeathsig() -> None:
    """Ask the kernel to SIGKILL this child when the worker dies (Linux only). Only for
    children: the signal follows the *thread* that forked, and a worker is forked by the
    single thread of its worker process."""
    try:
        _libc().prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Landlock (Linux >= 5.13): kernel-enforced, so it also stops native code (torch.save
# writes and torch.from_file reads through C++, never through Python's open, so no audit
# event sees them). Access bits: execute 0, write 1, read file 2, then 4-12 the ways to
# remove or make files; refer, truncate and device ioctl came with later ABIs.
_LANDLOCK_FS_DENIED = sum(1 << b for b in (0, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12))
_LANDLOCK_READ_FILE = 1 << 2
_LANDLOCK_FS_BY_ABI = {2: 1 << 13, 3: 1 << 14, 5: 1 << 15}  # refer, truncate, ioctl on devices
_LANDLOCK_NET_TCP = 0b11  # bind, connect
_LANDLOCK_SCOPES = 0b11  # abstract unix sockets, signals to processes outside the sandbox
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unavailable."""
    try:
        return max(0, _libc().syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, 1))
    except (OSError, AttributeError):
        return 0


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def readable_roots(protect: Sequence[str]) -> list[str]:
    """Paths whose union is the whole file system minus ``protect`` (and what lies below).

    Landlock can only *allow* reading beneath a path, so "everything but P" is built by
    walking from ``/`` down each protected path's ancestors and allowing every sibling
    on the way. Entries are compared by (device, inode), so a symlink or bind mount that
    names an ancestor is walked, not allowed whole, and one that names a protected path is
    left out. A protected path that does not exist yet stays unreadable once created.

    >>> roots = readable_roots(["/usr/lib"])
    >>> "/usr/lib" in roots or "/usr" in roots, "/usr/bin" in roots or not os.path.exists("/usr/bin")
    (False, True)
    """
    hidden: set[tuple[int, int]] = set()
    above: set[tuple[int, int]] = set()
    for p in protect:
        path = os.path.realpath(p)
        if path == os.sep:
            raise ValueError("cannot protect / (candidates must read torch's files)")
        if os.path.exists(path):
            hidden.add(_identity(path))
        while path != os.sep:
            path = os.path.dirname(path)
            if os.path.exists(path):
                above.add(_identity(path))
    roots: list[str] = []
    walked: set[tuple[int, int]] = set()

    def walk(folder: str) -> None:
        walked.add(_identity(folder))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            try:
                ident = _identity(entry.path)
            except OSError:  # dangling symlink, vanished file: nothing to read
                continue
            if ident in hidden:
                continue
            if ident in above:
                if ident not in walked and entry.is_dir():
                    walk(entry.path)
                continue
            roots.append(entry.path)

    walk(os.sep)
    return roots


def landlock_ruleset(protect: Sequence[str]) -> int:
    """A Landlock ruleset (a file descriptor) for children: no write, no execve, no read
    under ``protect``, no TCP bind/connect, no signals out; -1 when Landlock is missing.

    Built once per worker (the walk costs milliseconds), applied by each child with
    :func:`_landlock_restrict`; files created later beside a protected path are unreadable
    to children, which is the safe side.
    """
    abi = landlock_abi()
    if abi < 1:
        return -1
    libc = _libc()
    handled = _LANDLOCK_FS_DENIED | _LANDLOCK_READ_FILE
    handled |= sum(bit for v, bit in _LANDLOCK_FS_BY_ABI.items() if abi >= v)
    attr = (ctypes.c_uint64 * 3)(handled, _LANDLOCK_NET_TCP if abi >= 4 else 0, _LANDLOCK_SCOPES if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return -1
    # A child that trains on a GPU opens the driver's device files read-write and ioctls
    # them (CUDA is initialised in the child: it does not survive a fork).
    gpu = _LANDLOCK_READ_FILE | (1 << 1) | (_LANDLOCK_FS_BY_ABI[5] if abi >= 5 else 0)
    rules = [(path, _LANDLOCK_READ_FILE) for path in readable_roots(protect)]
    rules += [(os.path.join("/dev", name), gpu) for name in sorted(os.listdir("/dev")) if name.startswith("nvidia")]
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            rule = _PathBeneath(access, fd)
            libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0)  # 1: PATH_BENEATH
        finally:
            os.close(fd)
    return ruleset


def _landlock_restrict(ruleset: int) -> bool:
    """Confine this process and its descendants to ``ruleset``; False when it could not."""
    if ruleset < 0:
        return False
    libc = _libc()
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required by restrict_self
        return False
    return libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) == 0


@dataclass
class Confinement:
    """What a worker prepares once for all its children: the protected paths (refused to
    Python-level reads by the audit hook) and the Landlock ruleset (-1: unavailable)."""

    protect: tuple[str, ...] = ()
    ruleset: int = -1

    @classmethod
    def build(cls, protect: Sequence[str]) -> "Confinement":
        paths = tuple(os.path.realpath(p) for p in protect)
        return cls(paths, landlock_ruleset(paths))


def install_guards(limits: Limits, keep_fds: tuple[int, ...], workdir: str, confinement: Confinement,
                   emit_refusal: Callable[[str], None] | None = None) -> None:
    """Harden the current (child) process. Irreversible; call once, right after fork."""
    global _refuse_now
    _set_pdeathsig()
    os.chdir(workdir)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    keep = sorted(set(keep_fds) | {0, 1, 2} | ({confinement.ruleset} if confinement.ruleset >= 0 else set()))
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
    refuse, audit = _make_guards(confinement.protect, emit_refusal)

    def refuse_spawn(*args, **kwargs):
        refuse("_posixsubprocess.fork_exec (process spawning)")

    import _posixsubprocess
    _posixsubprocess.fork_exec = refuse_spawn
    _landlock_restrict(confinement.ruleset)
    if confinement.ruleset >= 0:
        os.close(confinement.ruleset)
    _refuse_now = refuse
    sys.addaudithook(audit)


@dataclass
class ChildOutcome:
    """How a child ended, as seen by its worker.

    ``messages``: the JSON objects the child sent, in order. ``exit_code`` is set when it
    exited, ``signal`` when a signal ended it; ``timed_out`` when the worker killed it at
    the wall-clock deadline; ``overflow`` when it sent more than its byte allowance or
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


def run_child(fn: Callable[..., None], args: tuple, limits: Limits, workdir: str,
              confinement: Confinement | None = None, max_bytes: int = 0) -> ChildOutcome:
    """Fork; in the child harden and call ``fn(*args, emit)``; wait at most
    ``limits.timeout_s`` seconds. ``emit(obj)`` sends one JSON-able object to the worker;
    the child may send :data:`MAX_OUTPUT_BYTES` + ``max_bytes`` bytes in all.
    ``confinement`` defaults to one that protects nothing (writes are still refused).

    Call only from a single-threaded process (a warm worker): a fork copies locks held
    by other threads without the threads that would release them.
    """
    threads = _os_threads()
    if threads > 1:
        raise RuntimeError(f"run_child needs a single-threaded process (this one has {threads} threads): "
                           "a fork copies locks held by other threads, and the child can hang on them; "
                           "use SandboxPool, whose workers stay single-threaded")
    own = confinement is None
    confinement = Confinement.build(()) if own else confinement
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(read_fd)
            os.setsid()
            write, dumps = os.write, json.dumps

            def emit(obj: dict) -> None:
                data = (dumps(obj, default=str) + "\n").encode()
                while data:
                    data = data[write(write_fd, data):]

            install_guards(limits, (write_fd,), workdir, confinement,
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
    if own and confinement.ruleset >= 0:
        os.close(confinement.ruleset)
    outcome = ChildOutcome()
    allowance = MAX_OUTPUT_BYTES + max(0, max_bytes)
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
                    chunk = os.read(read_fd, 1 << 16)
                    if not chunk:
                        open_pipe = False
                    size += len(chunk)
                    if size > allowance:
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
        env = dict(os.environ, **{var: str(threads) for var in _THREAD_ENV})
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
    workdir, confinement)`` (which calls :func:`run_child` for the untrusted part) and its
    return value completes the future. A task whose worker dies is retried once on a fresh
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
