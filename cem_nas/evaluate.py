"""The proxy score of a candidate: build, shape check, short training, test accuracy.

The protocol is LEMUR's: ``Net(in_shape=(batch, C, H, W), out_shape=(num_classes,), prm,
device)``, a forward pass on a small batch must give ``(batch, num_classes)``,
``train_setup(prm)``, then ``learn(train_loader)`` once per epoch, then accuracy on the
test split. ``prm`` holds the hyperparameters the candidate names in
``supported_hyperparameters()``, with values from :class:`EvalSettings`. A trained
candidate is ``ok`` only if its accuracy beats 1.2 x chance (LEMUR's bar); otherwise it
is ``low_accuracy`` and keeps its score.

Everything that touches candidate code runs in a sandbox child (:mod:`cem_nas.proxy_run`,
in the workers of :mod:`cem_nas.sandbox`). The child answers with raw predictions (one
class per test image, :data:`PREDICTION_DTYPE`) and never sees a test label; this module,
the trusted side (:class:`EvaluationPool`, in a process that never runs candidate code),
checks them and computes accuracy and the status (see the sandbox's threat model).
Use :class:`EvaluationPool` for many candidates (warm workers, a cache so an identical
candidate is never trained twice); :func:`evaluate` is the one-off convenience.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import threading
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from cem_nas.confinement import Limits
from cem_nas.policy import PolicyViolation, check_policy
from cem_nas.records import EvalResult
from cem_nas.sandbox import SandboxPool, WorkerLost

#: LEMUR's ``ok`` bar: accuracy must exceed this multiple of chance (1 / num_classes).
CHANCE_FACTOR = 1.2

#: How a child returns its predictions: little-endian int32 class indices, one per test image.
PREDICTION_DTYPE = np.dtype("<i4")


@dataclass
class EvalSettings:
    epochs: int = 1
    """Training epochs of the proxy (LEMUR's first-epoch accuracy: 1)."""
    batch_size: int = 32
    """Training batch size, >= 1 (LEMUR's default is 64; 32 on the whole mnist5k split ranks
    architectures close to a 5-epoch training: docs/results.md#proxy-fidelity)."""
    lr: float = 0.01
    """Learning rate passed in prm['lr'] (LEMUR default 0.01)."""
    momentum: float = 0.9
    """Momentum passed in prm['momentum'] (LEMUR default 0.9)."""
    dropout: float = 0.2
    """Dropout passed in prm['dropout'] (LEMUR default 0.2)."""
    timeout_s: float = 120.0
    """Wall-clock limit of one proxy run (one seed) in seconds; past it the run is killed (timeout)."""
    memory_mb: int = 2048
    """Memory a proxy run may allocate beyond the warm worker's, in MB (address-space limit); 0 = no limit."""
    cpu_s: int = 0
    """CPU-time limit of one proxy run in seconds; 0 = timeout_s x threads + 5."""
    threads: int = 1
    """Numeric threads per sandbox worker (torch intra-op, OpenMP, MKL)."""
    device: str = "cpu"
    """Torch device candidates train on (cuda disables the address-space limit)."""
    eval_batch_size: int = 256
    """Batch size of the test-accuracy pass."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "threads", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalSettings.{name} must be >= 1, got {getattr(self, name)}")
        if not self.timeout_s > 0:
            raise ValueError(f"EvalSettings.timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb < 0 or self.cpu_s < 0:
            raise ValueError("EvalSettings.memory_mb and cpu_s must be >= 0 (0 = default/no limit)")

    @property
    def prm(self) -> dict[str, float]:
        """The hyperparameter values a candidate may ask for."""
        return {"lr": self.lr, "momentum": self.momentum, "dropout": self.dropout}

    def limits(self) -> Limits:
        """The sandbox limits of one proxy run."""
        memory = self.memory_mb if self.memory_mb and self.device == "cpu" else None
        return Limits(timeout_s=self.timeout_s, cpu_s=self.cpu_s or None, memory_mb=memory,
                      threads=self.threads)


# ---------------------------------------------------------------------------- cache

def normalise_code(code: str) -> str:
    """Code with comments and formatting normalised (``ast.unparse(ast.parse(code))``),
    so two candidates that differ only there share a cache entry; the raw text with
    trailing whitespace stripped when it does not parse.

    >>> normalise_code("x  =  1   # one\\n\\n") == normalise_code("x = 1")
    True
    """
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError):
        return "\n".join(line.rstrip() for line in code.strip().splitlines())


def cache_key(code: str, settings: EvalSettings, seed: int, dataset_id: str = "") -> str:
    """sha256 of (normalised code, settings, seed, dataset identity)."""
    blob = json.dumps([normalise_code(code), dataclasses.asdict(settings), int(seed), dataset_id],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class EvaluationCache:
    """Results by :func:`cache_key`; thread-safe; JSON-able state for resume.

    ``worker_lost`` results are not stored: they say nothing about the candidate.
    """

    def __init__(self) -> None:
        self._entries: dict[str, EvalResult] = {}
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: str) -> EvalResult | None:
        with self._lock:
            found = self._entries.get(key)
            self.hits += found is not None
            return None if found is None else dataclasses.replace(found)

    def put(self, key: str, result: EvalResult) -> None:
        if result.status != "worker_lost":
            with self._lock:
                self._entries[key] = dataclasses.replace(result)

    def __len__(self) -> int:
        return len(self._entries)

    def state_dict(self) -> dict:
        with self._lock:
            return {"version": 1, "entries": {k: dataclasses.asdict(r) for k, r in self._entries.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unknown evaluation-cache state version {state.get('version')!r}; expected 1")
        with self._lock:
            self._entries = {k: EvalResult(**r) for k, r in state["entries"].items()}


# ---------------------------------------------------------------------------- parent side

def complete(fut: Future, cache: EvaluationCache, seeds, keys, cached: dict, fresh: list[EvalResult]) -> None:
    """Resolve ``fut`` with one result per seed: the cached ones where ``cached[seed]`` has
    one, the ``fresh`` ones (in seed order) elsewhere, which go into the cache."""
    it = iter(fresh)
    out = []
    for s, k in zip(seeds, keys):
        r = cached[s]
        if r is None:
            r = next(it)
            cache.put(k, r)
        out.append(r)
    fut.set_result(out)


def static_result(code: str, seeds: Sequence[int]) -> list[EvalResult] | None:
    """syntax_error / policy_violation results without running anything, or None."""
    try:
        check_policy(code)
    except SyntaxError as exc:
        status, message = "syntax_error", f"line {exc.lineno}: {exc.msg}"
    except PolicyViolation as exc:
        status, message = "policy_violation", str(exc)
    else:
        return None
    return [EvalResult(status, message, seed=s) for s in seeds]


def score(fields: dict, raw: bytes | None, labels: np.ndarray, num_classes: int) -> EvalResult:
    """The final EvalResult of one proxy run, computed on the trusted side.

    ``raw`` (None for a run that failed) holds the child's predicted class per test image
    as :data:`PREDICTION_DTYPE`; accuracy = share equal to ``labels`` (in [0, 1] by
    construction); ``ok`` needs accuracy > CHANCE_FACTOR / num_classes. Predictions of the
    wrong length or outside 0..num_classes-1 make the run ``train_error``.

    >>> labels = np.array([0, 1, 1, 2])
    >>> r = score({"status": "train_error"}, np.array([0, 1, 0, 2], "<i4").tobytes(), labels, 3)
    >>> r.status, r.accuracy
    ('ok', 0.75)
    >>> score({"status": "train_error"}, np.array([0, 1, 9, 2], "<i4").tobytes(), labels, 3).message
    'predictions outside 0..2 (seen 0..9)'
    """
    result = EvalResult(**fields)
    if raw is None:
        return result
    predicted = np.frombuffer(raw, dtype=PREDICTION_DTYPE) if len(raw) % PREDICTION_DTYPE.itemsize == 0 else None
    if predicted is None or len(predicted) != len(labels):
        got = "a partial value" if predicted is None else f"{len(predicted)} values"
        return dataclasses.replace(result, status="train_error",
                                   message=f"predictions malformed: {got} for {len(labels)} test images")
    low, high = int(predicted.min()), int(predicted.max())
    if low < 0 or high >= num_classes:
        return dataclasses.replace(result, status="train_error",
                                   message=f"predictions outside 0..{num_classes - 1} (seen {low}..{high})")
    accuracy = float(np.mean(predicted == labels))
    ok = accuracy > CHANCE_FACTOR / num_classes
    return dataclasses.replace(result, accuracy=accuracy, status="ok" if ok else "low_accuracy",
                               message="" if ok else f"accuracy {accuracy:.4f} <= {CHANCE_FACTOR} x chance")


def secret_order(labels: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The order in which the test images are shown to candidates: a permutation seeded
    from a hash of the test labels and images. Deterministic (every worker, every machine,
    every run sees the same order), yet a child, which holds no test labels, cannot
    compute it, so a split stored in a meaningful order (sorted by class) tells it nothing.

    >>> y = np.repeat(np.arange(3), 4); x = np.zeros((12, 1))
    >>> order = secret_order(y, x)
    >>> sorted(order.tolist()) == list(range(12)), bool((secret_order(y, x) == order).all())
    (True, True)
    """
    digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes() + np.ascontiguousarray(images).tobytes())
    return np.random.default_rng(int.from_bytes(digest.digest()[:16], "little")).permutation(len(labels))


def train_copies_in_test(x_train: np.ndarray, x_test: np.ndarray) -> int:
    """How many test images are byte-for-byte copies of a training image (a candidate that
    memorises the training set gets those right without generalising). 0 of 1,000 for
    mnist5k (measured with this function)."""
    seen = {hash(row.tobytes()) for row in x_train.reshape(len(x_train), -1)}
    return sum(hash(row.tobytes()) in seen for row in x_test.reshape(len(x_test), -1))


def _dataset_id(dataset) -> str:
    return json.dumps([getattr(dataset, "name", ""), list(dataset.in_shape), int(dataset.num_classes),
                       len(dataset.y_train), len(dataset.y_test)])


class Pool(Protocol):
    """What the loop asks of an evaluation executor: :class:`EvaluationPool` or
    :class:`cem_nas.distributed.DaskEvaluationPool`."""

    #: Results by :func:`cache_key`, saved with the loop's state (None: the executor keeps none).
    cache: EvaluationCache | None

    def submit(self, code: str, seeds: Sequence[int] = (0,)) -> Future:
        """A future of one :class:`~cem_nas.records.EvalResult` per seed, in order."""


class EvaluationPool:
    """Warm sandbox workers evaluating candidates on one dataset, with a result cache.

    Usage: ``with EvaluationPool(dataset, EvalSettings()) as pool:
    results = pool.submit(code, seeds=(0, 1)).result()``.

    ``dataset`` needs x_train, y_train, x_test, y_test (tensors), in_shape (C, H, W) and
    num_classes (a :class:`cem_nas.data.Dataset`). ``workers`` defaults to
    cpu_count // settings.threads. ``protect`` lists paths whose files a candidate may not
    even read (the run directory, say); the files that hold the dataset's labels
    (:func:`cem_nas.data.label_files`) are always added. Writes are refused everywhere.

    The test labels stay in this process: workers get the test images in
    :func:`secret_order`, children answer with predictions, and :func:`score` turns them
    into accuracy and status here. A worker that cannot start raises
    :class:`cem_nas.sandbox.WorkerStartError`.
    """

    def __init__(self, dataset, settings: EvalSettings | None = None, workers: int | None = None,
                 cache: EvaluationCache | None = None, protect: Sequence[str] = ()) -> None:
        for attr in ("x_train", "y_train", "x_test", "y_test", "in_shape", "num_classes"):
            if not hasattr(dataset, attr):
                raise TypeError(f"dataset lacks `{attr}`; pass a cem_nas.data.Dataset "
                                "(x_train, y_train, x_test, y_test tensors, in_shape, num_classes)")
        if len(dataset.y_test) == 0 or len(dataset.y_train) < 2:
            raise ValueError("dataset needs at least 2 training and 1 test example")
        self.settings = settings or EvalSettings()
        self.cache = cache if cache is not None else EvaluationCache()
        self._dataset_id = _dataset_id(dataset)
        from cem_nas.data import label_files
        self._protect = tuple(str(p) for p in protect) + tuple(label_files(dataset))
        arrays = {k: getattr(dataset, k).detach().cpu().contiguous().numpy()
                  for k in ("x_train", "y_train", "x_test", "y_test")}
        labels = arrays.pop("y_test").astype(np.int64)
        order = secret_order(labels, arrays["x_test"])
        arrays["x_test"], self._labels = arrays["x_test"][order], labels[order]
        self._num_classes = int(dataset.num_classes)
        copies = train_copies_in_test(arrays["x_train"], arrays["x_test"])
        if copies:
            warnings.warn(f"{copies} of {len(labels)} test images are exact copies of training images: "
                          "a candidate that memorises the training set scores them without generalising",
                          RuntimeWarning, stacklevel=2)
        self._pool = SandboxPool("cem_nas.proxy_run:worker_init",
                                 (arrays, self._num_classes, self.settings.device),
                                 "cem_nas.proxy_run:worker_handle", workers=workers,
                                 threads=self.settings.threads, protect=self._protect)

    @property
    def workers(self) -> int:
        return self._pool.size

    def worker_pids(self) -> list[int]:
        return self._pool.worker_pids()

    def key(self, code: str, seed: int) -> str:
        return cache_key(code, self.settings, seed, self._dataset_id)

    def submit(self, code: str, seeds: Sequence[int] = (0,)) -> Future:
        """A future of one EvalResult per seed (in order). Cached seeds are not rerun."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds is empty; pass at least one replicate seed, e.g. (0,)")
        fut: Future = Future()
        keys = [self.key(code, s) for s in seeds]
        cached = {s: self.cache.get(k) for s, k in zip(seeds, keys)}
        todo = [s for s in seeds if cached[s] is None]
        if not todo:
            fut.set_result([cached[s] for s in seeds])
            return fut
        static = static_result(code, todo)
        if static is not None:
            complete(fut, self.cache, seeds, keys, cached, static)
            return fut
        payload = {"code": code, "seeds": todo, "settings": dataclasses.asdict(self.settings)}
        # Every seed may run to its limit; the worker needs a margin to report back.
        inner = self._pool.submit(payload, deadline_s=len(todo) * (self.settings.timeout_s + 10) + 30)

        def done(f: Future) -> None:
            try:
                fresh = [score(fields, raw, self._labels, self._num_classes) for fields, raw in f.result()]
            except WorkerLost as exc:
                fresh = [EvalResult("worker_lost", str(exc), seed=s) for s in todo]
            except Exception as exc:  # a bug in the harness, not the candidate: surface it
                fut.set_exception(exc)
                return
            complete(fut, self.cache, seeds, keys, cached, fresh)

        inner.add_done_callback(done)
        return fut

    def evaluate(self, code: str, seeds: Sequence[int] = (0,)) -> list[EvalResult]:
        """Blocking :meth:`submit`."""
        return self.submit(code, seeds).result()

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "EvaluationPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def evaluate(code: str, dataset, epochs: int = 1, seeds: Sequence[int] = (0,), prm: dict | None = None,
             batch_size: int = EvalSettings.batch_size, timeout: float = 120.0, memory_mb: int = 2048,
             settings: EvalSettings | None = None) -> list[EvalResult]:
    """Proxy-evaluate one candidate in a one-off sandbox worker: one EvalResult per seed.

    Starting a worker costs an interpreter start with torch; for many candidates keep an
    :class:`EvaluationPool` open. ``prm`` overrides lr/momentum/dropout; ``settings``, when
    given, replaces the other keyword settings.
    """
    if settings is None:
        unknown = sorted(set(prm or {}) - {"lr", "momentum", "dropout"})
        if unknown:
            raise ValueError(f"prm keys {unknown} are not settable; use lr, momentum, dropout")
        settings = EvalSettings(epochs=epochs, batch_size=batch_size, timeout_s=timeout,
                                memory_mb=memory_mb, **(prm or {}))
    static = static_result(code, seeds)
    if static is not None:
        return static
    with EvaluationPool(dataset, settings, workers=1) as pool:
        return pool.evaluate(code, seeds)
