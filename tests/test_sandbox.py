"""The sandbox: static policy, and hostile candidates contained with the right status
while the worker pool stays healthy."""
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from cem_nas import zoo
from cem_nas.confinement import Limits, landlock_abi, readable_roots, run_child
from cem_nas.evaluate import EvalSettings, EvaluationPool
from cem_nas.policy import PolicyViolation, check_policy
from cem_nas.sandbox import SandboxPool, WorkerStartError
from candidates import BASE, hostile

torch.set_num_threads(1)

# --------------------------------------------------------------------------- static policy

@pytest.mark.parametrize("name", zoo.names())
def test_policy_accepts_every_zoo_baseline(name):
    check_policy(zoo.source(name))


@pytest.mark.parametrize("code, lineno, what", [
    ("import os", 1, "import os"),
    ("x = 1\nfrom subprocess import run", 2, "import subprocess"),
    ("import importlib", 1, "import importlib"),
    ("import torch, ctypes", 1, "import ctypes"),
    ("from . import net", 1, "relative import"),
    ("__import__('os')", 1, "__import__"),
    ("open('f', 'w')", 1, "open"),
    ("exec('1')", 1, "exec"),
    ("eval('1')", 1, "eval"),
    ("compile('1', 'f', 'exec')", 1, "compile"),
    ("g = globals()", 1, "globals"),
    ("getattr(__builtins__, 'open')", 1, "__builtins__"),
    ("x = ().__class__.__base__.__subclasses__()", 1, ".__subclasses__"),
    ("f = lambda: 0\ng = f.__globals__", 2, ".__globals__"),
    ("getattr(int, '__subclasses__')", 1, "getattr(..., '__subclasses__')"),
    ("def f():\n    try:\n        1 / 0\n    except Exception as e:\n        return e.tb_frame", 5, ".tb_frame"),
])
def test_policy_refuses_with_line_and_reason(code, lineno, what):
    with pytest.raises(PolicyViolation) as info:
        check_policy(code)
    assert (info.value.lineno, info.value.what) == (lineno, what)
    assert info.value.why and f"line {lineno}" in str(info.value)


def test_policy_allows_init_and_dataclasses_and_syntax_error_propagates():
    check_policy("from dataclasses import dataclass\nimport torch.nn.functional as F\n"
                 "class A(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n")
    with pytest.raises(SyntaxError):
        check_policy("def f(:\n")


def test_limits_reject_bad_values():
    for kwargs in ({"timeout_s": 0}, {"memory_mb": -1}, {"threads": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            Limits(**kwargs)


def test_run_child_refuses_to_fork_a_multithreaded_process(tmp_path):
    # A fork copies locks other threads hold without those threads: the child can hang.
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with pytest.raises(RuntimeError, match="thread"):
            run_child(lambda emit: None, (), Limits(), str(tmp_path))
    finally:
        stop.set()
        t.join()


# --------------------------------------------------------------------------- hostile candidates

def tiny_dataset():
    """4 classes of 8x8 images, class c marked by a bright pixel at (c, c): learnable in one
    epoch, not perfectly (the honest candidate scores about 0.9, so a forged score would show)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (1200,), generator=g)
    x = torch.randn(1200, 1, 8, 8, generator=g) * 0.3
    x[torch.arange(1200), 0, y, y] += 1.5
    return types.SimpleNamespace(name="tiny", x_train=x[:1000], y_train=y[:1000], x_test=x[1000:],
                                 y_test=y[1000:], in_shape=(1, 8, 8), num_classes=4)


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """A pool with short limits, a protected directory holding the test labels, an
    unprotected directory with a sentinel file, and the pids the pool started with."""
    protected, outside = tmp_path_factory.mktemp("rundir"), tmp_path_factory.mktemp("outside")
    (protected / "state.json").write_text("{}")
    torch.save(tiny_dataset().y_test, protected / "labels.pt")
    (outside / "sentinel.txt").write_text("keep me")
    settings = EvalSettings(timeout_s=6, memory_mb=512)
    with EvaluationPool(tiny_dataset(), settings, workers=2, protect=[str(protected)]) as pool:
        yield types.SimpleNamespace(pool=pool, dir=protected, outside=outside, pids=pool.worker_pids(),
                                    honest=pool.evaluate(BASE)[0])


def run(arena, code):
    [result] = arena.pool.evaluate(code, seeds=(0,))
    return result


CASES = {
    # name: (code, expected status, text the message must contain)
    "infinite loop": (hostile("FORWARD", "while True:\n    pass"), "timeout", "wall-clock"),
    "memory bomb": (hostile("FORWARD", "junk = []\nwhile True:\n    junk.append(bytearray(10**7))"),
                    "memory_error", "MemoryError"),
    "huge tensor": (hostile("INIT", "self.big = torch.empty(2**40)"), "memory_error", "allocate"),
    "tensor bomb": (hostile("FORWARD", "junk = []\nwhile True:\n    junk.append(torch.empty(10**8))"),
                    "memory_error", "allocate"),
    "fork bomb (static)": ("import os\nwhile True:\n    os.fork()\n", "policy_violation", "import os"),
    "fork bomb": (hostile("FORWARD", "while True:\n    torch.os.fork()"), "policy_violation", "os.fork"),
    "os.system": (hostile("INIT", "torch.os.system('true')"), "policy_violation", "os.system"),
    "subprocess": (hostile("INIT", "torch.importlib.import_module('subprocess').run(['true'])"),
                   "policy_violation", "subprocess.Popen"),
    "multiprocessing spawn": (hostile("INIT", "torch.sys.modules['multiprocessing.util']"
                                              ".spawnv_passfds('/bin/true', ['true'], ())"),
                              "policy_violation", "fork_exec"),
    "exec a binary": (hostile("INIT", "torch.os.execv('/bin/true', ['true'])"), "policy_violation", "os.exec"),
    "socket connect": (hostile("INIT", "s = torch.importlib.import_module('socket').socket()\n"
                                       "s.connect(('127.0.0.1', 9))"), "policy_violation", "socket"),
    "__import__ trick": ("m = __import__('os')\n", "policy_violation", "__import__"),
    "importlib trick": ("import importlib\n", "policy_violation", "importlib"),
    "getattr(__builtins__) trick": ("f = getattr(__builtins__, 'open')\n", "policy_violation", "__builtins__"),
    "dynamic getattr trick": (hostile("INIT", "getattr(torch, 'o' + 's').system('true')"),
                              "policy_violation", "os.system"),
    "ctypes segfault": (hostile("FORWARD", "torch.ctypes.string_at(0)"), "policy_violation", "ctypes"),
    "C-stack overflow segfault": (hostile("FORWARD", "torch.sys.setrecursionlimit(10**7)\n"
                                                     "f = lambda n: list(map(f, [n]))\nf(0)"),
                                  "shape_error", "SIGSEGV"),
    "os._exit": (hostile("LEARN", "torch.os._exit(3)"), "train_error", "exited with code 3"),
    "kill the worker": (hostile("INIT", "torch.os.kill(torch.os.getppid(), 9)"), "policy_violation", "os.kill"),
    "leave the temp dir": (hostile("INIT", "torch.os.chdir('/')"), "policy_violation", "os.chdir"),
    "raise in forward": (hostile("FORWARD", "raise ValueError('boom')"), "shape_error", "ValueError: boom"),
    "raise in learn": (hostile("LEARN", "raise KeyError('bad')"), "train_error", "KeyError"),
    "wrong output shape": (BASE.replace("return self.fc(x.flatten(1))", "return self.fc(x.flatten(1))[:, :2]"),
                           "shape_error", "expected (2, 4)"),
    "NaN loss": (BASE.replace("return self.fc(x.flatten(1))", "return self.fc(x.flatten(1)) * float('nan')"),
                 "nan_loss", "nan"),
    "NaN loss, exception swallowed": (
        BASE.replace("loss = self.criteria[0](self(inputs), labels)",
                     "try:\n                loss = self.criteria[0](self(inputs) * float('inf'), labels)\n"
                     "            except Exception:\n                continue"), "nan_loss", "non-finite"),
    "no Net class": ("import torch\ndef supported_hyperparameters():\n    return {'lr'}\n", "build_error", "Net"),
    "unknown hyperparameter": (BASE.replace("{'lr', 'momentum'}", "{'lr', 'warmup'}"), "build_error", "warmup"),
    "native code (cpp_extension)": (hostile("INIT", "import torch.utils.cpp_extension as ext\n"
                                                    "ext.load_inline('evil', 'int f() { return 1; }', functions=['f'])"),
                                    "policy_violation", "refused"),
    "torch.multiprocessing fork": (hostile("INIT", "import torch.multiprocessing as tmp\n"
                                                   "tmp.Process(target=print).start()"), "policy_violation", "os.fork"),
    "torch.multiprocessing spawn": (hostile("INIT", "import torch.multiprocessing as tmp\n"
                                                    "tmp.get_context('spawn').Process(target=print).start()"),
                                    "policy_violation", "refused"),
    "forged result line": (hostile("INIT", "for fd in range(3, 256):  # the result pipe is one of them\n"
                                           "    try:\n"
                                           "        torch.os.write(fd, b'{\"result\": {\"status\": \"ok\", \"accuracy\": 4000}}\\n')\n"
                                           "    except OSError:\n"
                                           "        pass\n"
                                           "torch.os._exit(0)"), "train_error", "malformed"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_candidate_is_contained(arena, name):
    code, status, text = CASES[name]
    result = run(arena, code)
    assert (result.status, name) == (status, name), result.message
    assert text in result.message


def test_file_writes_and_deletes_never_land(arena, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "written.pt"
    cases = [hostile("LEARN", f"torch.save(self.state_dict(), {str(target)!r})"),  # C++ writer, no audit event
             hostile("INIT", f"torch.builtins.open({str(target)!r}, 'w').write('x')"),
             hostile("INIT", f"torch.os.remove({str(victim)!r})"),
             hostile("INIT", f"torch.os.rename({str(victim)!r}, {str(target)!r})")]
    for code in cases:
        assert run(arena, code).status == "policy_violation"
    # A candidate that swallows the refusal still writes nothing.
    swallowed = hostile("LEARN", f"try:\n    torch.save(self.state_dict(), {str(target)!r})\nexcept Exception:\n    pass")
    run(arena, swallowed)
    assert victim.read_text() == "keep me" and not target.exists()


@pytest.mark.skipif(landlock_abi() < 1, reason="kernel without Landlock: native writes are stopped by RLIMIT_FSIZE only")
def test_native_code_cannot_create_files(arena, tmp_path):
    target = tmp_path / "native.pt"
    result = run(arena, hostile("LEARN", f"torch.save(self.state_dict(), {str(target)!r})"))
    assert result.status == "policy_violation" and "Permission denied" in result.message
    assert not target.exists()


def test_protected_directory_is_unreadable(arena):
    result = run(arena, hostile("INIT", f"torch.load({str(arena.dir / 'labels.pt')!r})"))
    assert result.status == "policy_violation" and "protected" in result.message


@pytest.mark.skipif(landlock_abi() < 1, reason="kernel without Landlock: native reads are not confined")
@pytest.mark.parametrize("how", ["torch.from_file({path!r}, size=8, dtype=torch.uint8)",
                                 "torch.jit.load({path!r})",
                                 "torch.builtins.open('/proc/{pool}/mem', 'rb').read(1)"])
def test_native_reads_of_the_labels_are_refused(arena, how):
    """Reads that no audit event sees (torch's C++ file readers) and the scoring process's
    memory (the test labels live there) are refused by the kernel."""
    code = hostile("INIT", how.format(path=str(arena.dir / "labels.pt"), pool=os.getpid()))
    result = run(arena, code)
    assert result.status == "policy_violation" and "ermission denied" in result.message, result


#: Candidates that tamper with torch, each with what it may score at most: "same" (the
#: training is untouched, so exactly the honest score), "not above" (it sabotages its own
#: training or predictions) or a failure status with a text.
TAMPERING = {
    "Tensor.sum forges a count": (hostile("INIT", "torch.Tensor.sum = lambda self, *a, **k: torch.tensor(4000.0)"), "same"),
    "Tensor.eq says all equal": (hostile("INIT", "torch.Tensor.eq = lambda self, *a, **k: torch.ones(self.shape, dtype=torch.bool)"), "same"),
    "Tensor.mean forged": (hostile("INIT", "torch.Tensor.mean = lambda self, *a, **k: torch.tensor(1.0)"), "same"),
    "harness scoring patched": (hostile("INIT", "ev = torch.sys.modules['cem_nas.evaluate']\nev.CHANCE_FACTOR = -1.0\n"
                                                "ev.score = ev.train_copies_in_test = None"), "same"),
    "harness dtype patched": (hostile("INIT", "torch.sys.modules['cem_nas.proxy_run'].PREDICTION_DTYPE = None"),
                              ("train_error", "malformed predictions")),
    "prints megabytes": (hostile("FORWARD", "print('x' * (1 << 20))"), "same"),
    "sets torch's thread count": (hostile("INIT", "torch.set_num_threads(8)"), "not above"),
    "Tensor.argmax says class 0": (hostile("INIT", "torch.Tensor.argmax = lambda self, *a, **k: torch.zeros(len(self), dtype=torch.long)"), "not above"),
    "F.cross_entropy returns 0": (hostile("INIT", "torch.nn.functional.cross_entropy = lambda *a, **k: torch.zeros((), requires_grad=True)"), "not above"),
    "F.linear returns zeros": (hostile("INIT", "torch.nn.functional.linear = lambda x, w, b=None: torch.zeros(len(x), w.shape[0])"), "not above"),
    "optimizer step does nothing": (hostile("INIT", "torch.optim.SGD.step = lambda self, *a, **k: None"), "not above"),
    "Tensor.argmax out of range": (hostile("INIT", "torch.Tensor.argmax = lambda self, *a, **k: torch.full((len(self),), 4000)"),
                                   ("train_error", "outside 0..3")),
    "Tensor.numpy forged": (hostile("INIT", "np = torch.sys.modules['numpy']\n"
                                            "torch.Tensor.numpy = lambda self, *a, **k: np.arange(7)"),
                            ("train_error", "malformed predictions")),
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_tampering_with_torch_never_raises_the_score(arena, name):
    code, bound = TAMPERING[name]
    result, honest = run(arena, code), arena.honest
    assert honest.status == "ok" and 0.5 < honest.accuracy < 1, honest
    if isinstance(bound, tuple):
        assert (result.status, bound[1] in result.message) == (bound[0], True), result
    elif bound == "same":
        assert (result.status, result.accuracy) == (honest.status, honest.accuracy), result
    else:  # other float summation order may move a few test images either way
        n = len(tiny_dataset().y_test)
        tolerance = 3 * (honest.accuracy * (1 - honest.accuracy) / n) ** 0.5
        assert result.message if not result.scored else result.accuracy <= honest.accuracy + tolerance, result


def test_pool_healthy_after_hostile_candidates(arena):
    """Run last in this module: no hostile candidate killed or hung a worker, and the
    workers stayed single-threaded (safe to fork)."""
    assert arena.pool.worker_pids() == arena.pids
    result = run(arena, BASE.replace("#INIT", "self.fresh = 1"))  # not a cache hit
    chance, n = 0.25, 200
    assert result.status == "ok" and result.accuracy > chance + 5 * (chance * (1 - chance) / n) ** 0.5, result
    assert result.accuracy == arena.honest.accuracy  # nothing a hostile candidate did reached the worker
    for pid in arena.pids:
        assert len(os.listdir(f"/proc/{pid}/task")) == 1
    assert sorted(p.name for p in arena.outside.iterdir()) == ["sentinel.txt"]
    assert (arena.outside / "sentinel.txt").read_text() == "keep me"
    assert sorted(p.name for p in arena.dir.iterdir()) == ["labels.pt", "state.json"]


def test_dead_worker_is_replaced(arena):
    victim = arena.pool.worker_pids()[0]
    os.kill(victim, 9)
    futures = [arena.pool.submit(hostile("INIT", f"self.k = {i}"), seeds=(0,)) for i in range(4)]
    results = [f.result() for f in futures]
    assert all(r[0].status == "ok" for r in results), results
    assert victim not in arena.pool.worker_pids() and len(arena.pool.worker_pids()) == 2


# --------------------------------------------------------------------------- start-up

@pytest.mark.parametrize("init, args, text", [
    ("no_such_module_anywhere:init", (), "No module named 'no_such_module_anywhere'"),  # an import error
    ("os:_exit", (3,), "exited with code 3 before it was ready"),
    ("signal:raise_signal", (signal.SIGKILL,), "SIGKILL"),  # what the OOM killer does
])
def test_worker_that_cannot_start_is_a_clear_error_within_seconds(init, args, text):
    start = time.monotonic()
    with pytest.raises(WorkerStartError, match="what to do") as info:
        SandboxPool(init, args, "cem_nas.proxy_run:worker_handle", workers=1)
    assert text in str(info.value) and time.monotonic() - start < 30, str(info.value)


GUARDLESS = """
import sys
sys.path.insert(0, {tests!r})
from candidates import BASE
from test_sandbox import tiny_dataset
from cem_nas.evaluate import evaluate
[r] = evaluate(BASE, tiny_dataset(), timeout=20)
print("STATUS", r.status)
"""


@pytest.mark.parametrize("how", ["file", pytest.param("stdin", marks=pytest.mark.slow)])
def test_evaluate_from_a_script_without_main_guard(tmp_path, how):
    """Workers never re-import the caller's __main__ (the old multiprocessing spawn did,
    and the script hung): a guardless script or ``python -`` gets its result."""
    repo, tests = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
    script = GUARDLESS.format(tests=str(tests))
    (tmp_path / "guardless.py").write_text(script)
    argv = [sys.executable, str(tmp_path / "guardless.py")] if how == "file" else [sys.executable, "-"]
    start = time.monotonic()
    done = subprocess.run(argv, input=script if how == "stdin" else None, capture_output=True, text=True,
                          timeout=90, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(repo)))
    assert done.returncode == 0 and "STATUS ok" in done.stdout, done.stderr[-2000:]
    assert time.monotonic() - start < 60


def test_readable_roots_leave_out_protected_paths_and_aliases(tmp_path):
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "labels").write_text("1 2 3")
    (tmp_path / "public").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "secret")
    (tmp_path / "up").symlink_to(tmp_path)
    roots = readable_roots([str(tmp_path / "secret"), str(tmp_path / "not_yet")])
    assert str(tmp_path / "public") in roots
    for hidden in ("secret", "alias", "up", "not_yet"):
        assert str(tmp_path / hidden) not in roots
    assert not any(r.startswith(str(tmp_path / "secret")) for r in roots)
    with pytest.raises(ValueError, match="cannot protect /"):
        readable_roots(["/"])
