"""The sandbox: static policy, and hostile candidates contained with the right status
while the worker pool stays healthy."""
import os
import threading
import types

import pytest
import torch

from cem_nas import zoo
from cem_nas.evaluate import EvalSettings, EvaluationPool
from cem_nas.sandbox import Limits, PolicyViolation, check_policy, landlock_abi, run_child
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
    """4 classes of 8x8 images, class c marked by a bright pixel at (c, c): learnable in one epoch."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (1200,), generator=g)
    x = torch.randn(1200, 1, 8, 8, generator=g) * 0.3
    x[torch.arange(1200), 0, y, y] += 3.0
    return types.SimpleNamespace(name="tiny", x_train=x[:1000], y_train=y[:1000], x_test=x[1000:],
                                 y_test=y[1000:], in_shape=(1, 8, 8), num_classes=4)


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """A pool with short limits, a protected directory holding a file, and the pids it started with."""
    protected = tmp_path_factory.mktemp("rundir")
    (protected / "state.json").write_text("{}")
    settings = EvalSettings(timeout_s=6, memory_mb=512)
    with EvaluationPool(tiny_dataset(), settings, workers=2, protect=[str(protected)]) as pool:
        yield types.SimpleNamespace(pool=pool, dir=protected, pids=pool.worker_pids())


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
    result = run(arena, hostile("INIT", f"torch.load({str(arena.dir / 'state.json')!r})"))
    assert result.status == "policy_violation" and "protected" in result.message


def test_pool_healthy_after_hostile_candidates(arena):
    """Run last in this module: no hostile candidate killed or hung a worker, and the
    workers stayed single-threaded (safe to fork)."""
    assert arena.pool.worker_pids() == arena.pids
    result = run(arena, BASE)
    chance, n = 0.25, 200
    assert result.status == "ok" and result.accuracy > chance + 5 * (chance * (1 - chance) / n) ** 0.5, result
    for pid in arena.pids:
        assert len(os.listdir(f"/proc/{pid}/task")) == 1


def test_dead_worker_is_replaced(arena):
    victim = arena.pool.worker_pids()[0]
    os.kill(victim, 9)
    futures = [arena.pool.submit(hostile("INIT", f"self.k = {i}"), seeds=(0,)) for i in range(4)]
    results = [f.result() for f in futures]
    assert all(r[0].status == "ok" for r in results), results
    assert victim not in arena.pool.worker_pids() and len(arena.pool.worker_pids()) == 2
