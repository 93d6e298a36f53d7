"""One untrusted child: forked from a warm worker, confined, watched.

Per task the worker forks a *child* (:func:`run_child`): a fork costs milliseconds, an
interpreter start with torch costs seconds. The child starts its own session (so a
SIGKILL to its process group also ends anything it started), asks the kernel to kill it
if the worker dies, closes every inherited descriptor but its result pipe, moves to an
empty temporary directory, sets rlimits (address space, CPU time, file size 0, no core
files), caps its numeric threads, and installs an audit hook (:func:`install_guards`)
that refuses process spawning, signals to other processes, sockets, ctypes, every
file-system write and any read inside a protected path. Then Landlock (Linux >= 5.13,
kernel-enforced, so it also binds native code): no file-system write, no execve, no
reading a file under a protected path, no TCP bind/connect, no signals or ptrace (hence
no ``/proc/<pid>/mem``) to processes outside the child.

The worker enforces a wall-clock deadline, reads at most :data:`MAX_OUTPUT_BYTES` (plus
the size of the predictions it expects) of newline-delimited JSON from the child (never
pickle: the child is untrusted), and reports how the child ended as a
:class:`ChildOutcome`.

Threat model, the child's part (the whole model: :mod:`cem_nas.sandbox`)

Defended:

- *Reading the answers from files.* Every file that holds the test labels (the dataset
  cache under ``$CEM_NAS_CACHE``, the raw dataset files, the run directory, the worker's
  own start-up file) is unreadable from a child (audit hook for Python reads, Landlock
  for native ones such as ``torch.from_file``). The scoring process's memory is out of
  reach (Landlock refuses ptrace, which guards ``/proc/<pid>/mem``).
- *Breaking out or breaking others.* Writes, process creation, sockets, signals, memory
  and time are limited as above; every child is a fresh fork, so nothing it patches
  survives it; a child that kills itself, hangs or floods its pipe gets a status and the
  worker carries on.

Not defended (by design or out of reach):

- Kernels without Landlock (the pool warns): Python-level reads of protected paths are
  still refused, but native readers (``torch.from_file``, ``torch.jit.load``) are not,
  nor is the scoring process's memory (``/proc/<pid>/mem``, unless Yama's
  ``ptrace_scope`` >= 1), nor native writes beyond RLIMIT_FSIZE's zero bytes.
- Aliases the walk cannot see: a hard link or a bind mount of a protected file or
  directory's *inside* placed elsewhere stays readable. The Python-level guards (audit
  hook, import guard, the refusal record) can be disabled by a candidate that patches
  their helpers; the kernel layers and the process boundary cannot. Root users are not
  limited by RLIMIT_NPROC, so spawning is stopped by the audit hook, by disabling
  ``_posixsubprocess.fork_exec`` in the child and by Landlock's execve refusal. This is
  not a container: a kernel exploit escapes it.
"""
from __future__ import annotations

import ctypes
import importlib
import json
import os
import resource
import select
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence

from cem_nas.policy import ALLOWED_MODULES

#: Environment variables that cap numeric library threads (set before torch is imported).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: Bytes a child may send back; more is treated as misbehaviour and the child is killed.
MAX_OUTPUT_BYTES = 1 << 20


class SandboxRefusal(PermissionError):
    """Raised inside a child when the audit hook or the import guard refuses an action."""


def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    """``__import__`` for candidate code: the static policy enforced again at run time,
    so an import name built dynamically cannot get past it."""
    if level or name.split(".")[0] not in ALLOWED_MODULES:
        _refuse(f"import {name}")
    return importlib.__import__(name, globals, locals, fromlist, level)


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
    for var in THREAD_ENV:
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
