"""The untrusted side of a proxy evaluation: a sandbox worker and the children it forks.

A worker (:func:`worker_init`) holds the training split and the test *images*, never
the test labels: every child inherits its memory. For each seed of a candidate
(:func:`worker_handle`) it forks a child (:func:`cem_nas.confinement.run_child`) that runs
:func:`child_evaluate`: build ``Net``, check the output shape, ``train_setup``, ``learn``
once per epoch, then predict one class per test image. The child answers with those raw
predictions (:data:`~cem_nas.evaluate.PREDICTION_DTYPE`); the worker bounds and checks
everything it sent (:func:`outcome_result`) and the trusted side
(:func:`cem_nas.evaluate.score`) computes accuracy and the status. Nothing here is
trusted with a score: see the sandbox's threat model (:mod:`cem_nas.sandbox`).
"""
from __future__ import annotations

import base64
import builtins
import dataclasses
import math
import signal
import sys
import time
import traceback
import types
from typing import Any, Callable

from cem_nas.confinement import REFUSALS, ChildOutcome, Confinement, Limits, SandboxRefusal, guarded_import, run_child
from cem_nas.evaluate import PREDICTION_DTYPE, EvalSettings
from cem_nas.policy import PolicyViolation
from cem_nas.records import EvalResult

#: Bounds on what a child reports besides its predictions (beyond them the value is dropped).
MAX_PARAMS, MAX_FLOPS = 10**13, 10**18

#: Builtins withheld from candidate code at run time (the AST policy refuses them too).
_WITHHELD_BUILTINS = ("open", "exec", "eval", "compile", "breakpoint", "input", "globals",
                      "locals", "vars", "help", "exit", "quit", "memoryview")


# ---------------------------------------------------------------------------- child side

class NonFiniteLoss(ArithmeticError):
    """The training loss became NaN or infinite."""


class _LossWatch:
    """Wraps a criterion: records each loss value and stops training at the first
    non-finite one (the candidate might catch the exception; the flag survives)."""

    def __init__(self, fn: Callable, monitor: dict) -> None:
        self.fn, self.monitor = fn, monitor

    def __call__(self, *args, **kwargs):
        loss = self.fn(*args, **kwargs)
        if hasattr(loss, "numel") and loss.numel() == 1:
            value = float(loss.detach())
            self.monitor["sum"] += value
            self.monitor["count"] += 1
            if not math.isfinite(value):
                self.monitor["nonfinite"] = True
                raise NonFiniteLoss(f"training loss became {value}")
        return loss

    def __getattr__(self, name):  # behave like the wrapped criterion otherwise
        return getattr(self.fn, name)


def _watch_criteria(model, monitor: dict) -> None:
    for name in ("criteria", "criterion"):
        crit = getattr(model, name, None)
        if isinstance(crit, (tuple, list)):
            setattr(model, name, type(crit)(_LossWatch(c, monitor) if callable(c) else c for c in crit))
        elif callable(crit):
            object.__setattr__(model, name, _LossWatch(crit, monitor))


class BatchLoader:
    """Re-iterable (x, y) batches of a tensor pair, reshuffled each epoch from a seed.

    Every candidate with the same replicate seed sees the same batch order (common random
    numbers make score differences between candidates less noisy). A last batch of one
    sample is dropped: batch norm cannot train on it.
    """

    def __init__(self, x, y, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size, self.seed, self.epoch = x, y, batch_size, seed, 0

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size + (n % self.batch_size > 1)

    def __iter__(self):
        import torch
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.y), generator=gen)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if len(idx) > 1:
                yield self.x[idx], self.y[idx]  # index copies: in-place edits cannot reach the data


def _candidate_line(tb) -> str:
    lines = [f.lineno for f in traceback.extract_tb(tb) if f.filename == "<candidate>"]
    return f" (candidate line {lines[-1]})" if lines else ""


def _is_memory_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or any(s in text for s in (
        "can't allocate memory", "Cannot allocate memory", "not enough memory", "bad_alloc",
        "out of memory"))


def _status_for(exc: BaseException, stage_status: str) -> str:
    # Native code meets the kernel's refusal (Landlock, rlimits) as EACCES/EPERM.
    refused = isinstance(exc, PermissionError) or any(
        s in str(exc) for s in ("Permission denied", "Operation not permitted"))
    if REFUSALS or refused or isinstance(exc, (SandboxRefusal, PolicyViolation)):
        return "policy_violation"
    if isinstance(exc, NonFiniteLoss):
        return "nan_loss"
    if _is_memory_error(exc):
        return "memory_error"
    return stage_status


def _flops_per_sample(model, probe) -> int:
    """Multiply-adds of matmuls and convolutions in one forward pass, per sample.

    torch.utils.flop_counter counts 2 FLOPs per multiply-add of every matmul/conv op,
    functional calls included; halved, this equals cem_nas.zoo.describe's Conv2d+Linear
    multiply-add count on the zoo models. -1 when the counter fails on some op.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(probe)
        return int(counter.get_total_flops()) // 2 // len(probe)
    except Exception:
        return -1


def child_evaluate(state: dict, code: str, seed: int, settings: dict, emit: Callable[[dict], None]) -> None:
    """The proxy run of one (candidate, seed), inside a sandbox child: emits a failure
    status, or status ``trained`` with the predicted class of each test image (the child
    holds no test labels; the trusted side scores them).

    Stages are announced before they start so a crash is attributed to the right one.
    """
    import torch
    cfg = EvalSettings(**settings)
    device = torch.device(cfg.device)
    result: dict[str, Any] = {"seed": seed}
    stage = "build_error"

    def finish(status: str, message: str = "") -> None:
        emit({"result": dict(result, status=status, message=message[:2000])})

    try:
        emit({"stage": stage})
        module = types.ModuleType("candidate")
        module.__dict__["__builtins__"] = dict(
            {k: v for k, v in vars(builtins).items() if k not in _WITHHELD_BUILTINS},
            __import__=guarded_import)
        sys.modules["candidate"] = module  # dataclasses in candidate code look their module up
        exec(compile(code, "<candidate>", "exec"), module.__dict__)  # the sandbox child is the point
        for attr in ("Net", "supported_hyperparameters"):
            if not callable(getattr(module, attr, None)):
                return finish("build_error", f"the file defines no callable `{attr}` (LEMUR model interface)")
        wanted = set(module.supported_hyperparameters())
        missing = sorted(wanted - set(cfg.prm))
        if missing:
            return finish("build_error", f"supported_hyperparameters() asks for {missing}; "
                                         f"the settings provide {sorted(cfg.prm)}")
        prm = {k: v for k, v in cfg.prm.items() if k in wanted}
        torch.manual_seed(seed)
        x_train, y_train = state["x_train"], state["y_train"]
        in_shape = (cfg.batch_size, *x_train.shape[1:])
        model = module.Net(in_shape, (state["num_classes"],), prm, device)
        result["params"] = int(sum(p.numel() for p in model.parameters()))
        emit({"params": result["params"]})

        stage = "shape_error"
        emit({"stage": stage})
        probe = x_train[:2].to(device)
        model.eval()
        with torch.no_grad():
            out = model(probe)
        expected = (len(probe), state["num_classes"])
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return finish("shape_error", f"forward gave {got} for input {tuple(probe.shape)}; expected {expected}")
        result["flops"] = _flops_per_sample(model, probe)
        emit({"flops": result["flops"]})

        stage = "build_error"
        emit({"stage": "train_setup"})
        model.train_setup(prm)
        monitor = {"sum": 0.0, "count": 0, "nonfinite": False}
        _watch_criteria(model, monitor)

        stage = "train_error"
        emit({"stage": stage})
        loader = BatchLoader(x_train, y_train, cfg.batch_size, seed)
        start = time.perf_counter()
        for _ in range(cfg.epochs):
            monitor.update(sum=0.0, count=0)
            model.learn(loader)
            if monitor["nonfinite"]:
                raise NonFiniteLoss("training loss became non-finite (exception caught by the candidate)")
        result["train_seconds"] = time.perf_counter() - start
        if monitor["count"]:
            result["loss"] = monitor["sum"] / monitor["count"]
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise NonFiniteLoss("parameters are not finite after training")

        emit({"stage": "eval"})
        start = time.perf_counter()
        model.eval()
        x_test, predicted = state["x_test"], []
        with torch.no_grad():
            for i in range(0, len(x_test), cfg.eval_batch_size):
                batch = x_test[i:i + cfg.eval_batch_size]
                out = model(batch.to(device))
                if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(batch), state["num_classes"]):
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(f"forward gave {got} on a test batch of {len(batch)}")
                if not bool(torch.isfinite(out).all()):
                    raise NonFiniteLoss("test outputs are not finite")
                predicted.append(out.argmax(1).cpu())
        raw = torch.cat(predicted).numpy().astype(PREDICTION_DTYPE).tobytes()
        result["eval_seconds"] = time.perf_counter() - start
        emit({"result": dict(result, status="trained", message=""), "predictions": base64.b64encode(raw).decode()})
        return None
    except BaseException as exc:  # anything the candidate raises is its status
        what = f"refused: {REFUSALS[0]}" if REFUSALS else f"{type(exc).__name__}: {exc}"
        failed = (_status_for(exc, stage), what + _candidate_line(exc.__traceback__))
    # Outside the except block: the traceback, and the frames holding whatever exhausted
    # memory, are released before the report is serialised.
    finish(*failed)


# ---------------------------------------------------------------------------- worker side

def worker_init(arrays: dict, num_classes: int, device: str) -> dict:
    """Worker state: the training split and the test *images* as private tensors (never
    the test labels: every child inherits this memory), models warmed up once so children
    inherit torch's lazily loaded code instead of loading it each time."""
    import torch
    if "y_test" in arrays:
        raise ValueError("test labels must not enter a sandbox worker: its children run candidate code")
    state = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    state["num_classes"] = num_classes
    _, c, h, w = state["x_train"].shape
    net = torch.nn.Sequential(torch.nn.Conv2d(c, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                              torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * h * w, num_classes))
    net(state["x_train"][:2])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    torch.nn.functional.cross_entropy(net(state["x_train"][:4]), state["y_train"][:4]).backward()
    opt.step()
    from torch.utils.flop_counter import FlopCounterMode  # noqa: F401 (warm import)
    return state


#: Statuses that do not depend on the replicate seed: later seeds reuse the first result.
_SEED_INDEPENDENT = ("syntax_error", "policy_violation", "build_error", "shape_error", "timeout",
                     "memory_error")

#: Statuses a child may report about itself; ``trained`` comes with predictions and is
#: turned into ``ok``/``low_accuracy`` only by :func:`cem_nas.evaluate.score`.
_CHILD_STATUSES = frozenset({"build_error", "shape_error", "nan_loss", "train_error", "memory_error",
                             "policy_violation", "trained"})

#: Status of a trained result until the trusted side scores it: a result that somehow
#: skipped scoring is a failure, never a success.
_UNSCORED = "train_error"


def _bounded(value: Any, kind: type, low: float, high: float, default: Any) -> Any:
    """``value`` if it is a ``kind`` (bool excluded) within [low, high] and finite, else ``default``."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return default
    return kind(value) if math.isfinite(value) and low <= value <= high else default


def outcome_result(outcome: ChildOutcome, seed: int, limits: Limits, n_test: int) -> tuple[EvalResult, bytes | None]:
    """(EvalResult, raw predictions or None) of one child, from what it sent and how it
    ended. Everything the child sent is untrusted: its status must be one a child may
    report, counts and times are dropped when out of bounds (times beyond the child's
    wall-clock life included), and predictions must be exactly ``n_test`` values of
    :data:`PREDICTION_DTYPE`. A trained result is :data:`_UNSCORED` until :func:`~cem_nas.evaluate.score`."""
    refused = next((m["refused"] for m in outcome.messages if isinstance(m.get("refused"), str)), "")
    for msg in outcome.messages:
        if not isinstance(msg.get("result"), dict):
            continue
        data, wall = msg["result"], outcome.wall_s
        fields = dict(params=_bounded(data.get("params"), int, 0, MAX_PARAMS, -1),
                      flops=_bounded(data.get("flops"), int, -1, MAX_FLOPS, -1),
                      loss=_bounded(data.get("loss"), float, -math.inf, math.inf, math.nan),
                      train_seconds=_bounded(data.get("train_seconds"), float, 0, wall, math.nan),
                      eval_seconds=_bounded(data.get("eval_seconds"), float, 0, wall, math.nan), seed=seed)
        status, message = data.get("status"), str(data.get("message", ""))[:2000]
        if status not in _CHILD_STATUSES:
            return EvalResult("train_error", f"malformed result from the child: status {str(status)[:40]!r}",
                              **fields), None
        if refused:
            return EvalResult("policy_violation", f"refused: {refused}", **fields), None
        if status != "trained":
            return EvalResult(status, message, **fields), None
        try:
            raw = base64.b64decode(msg.get("predictions", ""), validate=True)
        except (TypeError, ValueError):
            raw = b""
        if len(raw) != n_test * PREDICTION_DTYPE.itemsize:
            return EvalResult("train_error", f"malformed predictions from the child ({len(raw)} bytes; expected "
                                             f"{n_test} x {PREDICTION_DTYPE.itemsize})", **fields), None
        return EvalResult(_UNSCORED, "trained; not scored yet", **fields), raw
    status, message = _crash_status(outcome, limits)
    known = {k: m[k] for m in outcome.messages for k in ("params", "flops")
             if _bounded(m.get(k), int, -1, MAX_FLOPS, None) is not None}
    return EvalResult(status, message, seed=seed, **known), None


def _crash_status(outcome: ChildOutcome, limits: Limits) -> tuple[str, str]:
    """(status, message) of a child that ended without reporting a result."""
    stages = [m["stage"] for m in outcome.messages if isinstance(m.get("stage"), str)]
    stage = {"train_setup": "build_error", "eval": "train_error"}.get(stages[-1] if stages else "", "")
    stage = stage or (stages[-1] if stages and stages[-1] in ("shape_error", "train_error") else "build_error")
    during = f"during {stage.replace('_error', '')}"
    refused = next((m["refused"] for m in outcome.messages if isinstance(m.get("refused"), str)), "")
    if refused:
        return "policy_violation", f"refused: {refused}; the child then {outcome.describe()}"
    if outcome.timed_out:
        return "timeout", f"exceeded the {limits.timeout_s:g} s wall-clock limit {during}"
    if outcome.signal == signal.SIGXCPU:  # the RLIMIT_CPU soft limit
        return "timeout", f"exceeded the CPU-time limit {during}"
    if outcome.signal == signal.SIGKILL:  # not ours (ours is timed_out): the kernel's OOM killer
        return "memory_error", f"{outcome.describe()} (likely out of memory) {during}"
    harness = next((str(m["harness_error"]) for m in outcome.messages if "harness_error" in m), "")
    return stage, f"{outcome.describe()} without a result {during}" + (f"; harness error: {harness}" if harness else "")


def worker_handle(state: dict, payload: dict, workdir: str, confinement: Confinement) -> list[tuple[dict, bytes | None]]:
    """Run the seeds of one candidate, each in its own child: (result fields, raw
    predictions or None) per seed. A seed-independent failure is not repeated for the
    remaining seeds."""
    settings = EvalSettings(**payload["settings"])
    limits = settings.limits()
    n_test = len(state["x_test"])
    out: list[tuple[EvalResult, bytes | None]] = []
    for seed in payload["seeds"]:
        if out and out[0][0].status in _SEED_INDEPENDENT:
            first = out[0][0]
            out.append((dataclasses.replace(first, seed=seed, message=f"{first.message} (as seed {first.seed}; not rerun)"), None))
            continue
        outcome = run_child(child_evaluate, (state, payload["code"], seed, payload["settings"]), limits, workdir,
                            confinement, max_bytes=2 * n_test * PREDICTION_DTYPE.itemsize)
        out.append(outcome_result(outcome, seed, limits, n_test))
    return [(dataclasses.asdict(r), raw) for r, raw in out]
