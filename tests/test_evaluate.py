"""Proxy evaluation: the LEMUR protocol on real data, reproducibility, the cache, and the
mapping from how a sandbox child ended to a status."""
import base64
import dataclasses
import json
import math
import signal

import numpy as np
import pytest
import torch

from cem_nas import zoo
from cem_nas.confinement import ChildOutcome, Limits
from cem_nas.data import load_dataset
from cem_nas.evaluate import (EvalSettings, EvaluationCache, EvaluationPool, cache_key, evaluate, normalise_code,
                              score, secret_order, static_result, train_copies_in_test)
from cem_nas.proxy_run import BatchLoader, outcome_result
from cem_nas.records import STATUSES, EvalResult
from test_sandbox import BASE, tiny_dataset

torch.set_num_threads(1)

FAST_BASELINES = ("mlp", "vgg")


def clearly_above_chance(accuracy: float, num_classes: int, n_test: int, k: float = 5.0) -> bool:
    """Accuracy more than k binomial standard errors above chance (1 / num_classes)."""
    chance = 1 / num_classes
    return accuracy > chance + k * math.sqrt(chance * (1 - chance) / n_test)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k")


@pytest.fixture(scope="module")
def pool(mnist):
    with EvaluationPool(mnist, EvalSettings(), workers=1) as p:
        yield p


@pytest.fixture(scope="module")
def fast_results(pool):
    futures = {name: pool.submit(zoo.source(name), seeds=(0,)) for name in FAST_BASELINES}
    return {name: f.result()[0] for name, f in futures.items()}


# --------------------------------------------------------------------------- real training

@pytest.mark.parametrize("name", FAST_BASELINES)
def test_baseline_trains_one_epoch_and_beats_chance(fast_results, mnist, name):
    r = fast_results[name]
    assert r.status == "ok", r.message
    assert clearly_above_chance(r.accuracy, mnist.num_classes, len(mnist.y_test)), r
    assert math.isfinite(r.loss) and r.train_seconds > 0 and r.eval_seconds > 0


@pytest.mark.parametrize("name", FAST_BASELINES)
def test_params_and_flops_agree_with_zoo_describe(fast_results, mnist, name):
    described = zoo.describe(name, mnist.in_shape, mnist.num_classes)
    assert (fast_results[name].params, fast_results[name].flops) == (described["params"], described["flops"])


def test_fixed_seed_reproduces_across_processes_and_other_seed_differs(mnist, fast_results):
    """evaluate() trains in a fresh worker: seed 0 must repeat the pool's run exactly."""
    again, other = evaluate(zoo.source("mlp"), mnist, seeds=(0, 1))
    before = fast_results["mlp"]
    assert (again.status, again.accuracy, again.loss, again.seed) == ("ok", before.accuracy, before.loss, 0)
    assert other.seed == 1 and other.loss != before.loss


def test_identical_candidate_is_not_trained_twice(pool):
    code = zoo.source("mlp")
    first = pool.evaluate(code, seeds=(0,))
    hits = pool.cache.hits
    reformatted = "# same net, other comments\n" + code.replace("\n\n\n", "\n\n")
    fut = pool.submit(reformatted, seeds=(0,))
    assert fut.done() and fut.result() == first and pool.cache.hits == hits + 1


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_every_baseline_beats_chance_reproducibly(pool, mnist, name):
    pool.cache = EvaluationCache()
    first = pool.evaluate(zoo.source(name), seeds=(0,))[0]
    pool.cache = EvaluationCache()
    second = pool.evaluate(zoo.source(name), seeds=(0,))[0]
    assert first.status == "ok", first.message
    assert clearly_above_chance(first.accuracy, mnist.num_classes, len(mnist.y_test)), first
    assert (first.accuracy, first.loss) == (second.accuracy, second.loss)


# --------------------------------------------------------------------------- pure parts

def test_static_failures_need_no_worker():
    assert [r.status for r in evaluate("def f(:\n", dataset=None, seeds=(0, 1))] == ["syntax_error"] * 2
    [r] = static_result("import socket\n", (0,))
    assert r.status == "policy_violation" and "line 1" in r.message
    assert static_result(BASE, (0,)) is None


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="batch_size"):
        EvalSettings(batch_size=0)
    with pytest.raises(ValueError, match="prm keys"):
        evaluate(BASE, tiny_dataset(), prm={"weight_decay": 0.1})
    with pytest.raises(TypeError, match="x_train"):
        EvaluationPool(object())


def test_cache_key_ignores_comments_and_layout_only():
    s = EvalSettings()
    key = cache_key(BASE, s, 0)
    assert cache_key("# header\n" + BASE.replace("        return self", "        # why\n        return self"), s, 0) == key
    assert cache_key(BASE.replace("{'lr', 'momentum'}", "{'momentum', 'lr', }"), s, 0) != key  # real edit
    assert cache_key(BASE, s, 1) != key
    assert cache_key(BASE, EvalSettings(lr=0.1), 0) != key
    assert cache_key(BASE, s, 0, dataset_id="cifar10") != key
    assert normalise_code("x = (1 +\n  2)  # c") == "x = 1 + 2"


def test_cache_state_round_trips_through_json():
    cache = EvaluationCache()
    cache.put("a", EvalResult("ok", "", 0.9, 0.3, 10, 5, 1.0, 0.1, seed=0))  # no NaN: NaN != NaN
    cache.put("b", EvalResult("worker_lost", "died"))  # says nothing about the candidate
    restored = EvaluationCache()
    restored.load_state_dict(json.loads(json.dumps(cache.state_dict())))
    assert len(restored) == 1 and restored.get("a") == cache.get("a") and restored.get("b") is None
    with pytest.raises(ValueError, match="version"):
        restored.load_state_dict({"version": 0, "entries": {}})


def test_batch_loader_is_seeded_and_reshuffles_each_epoch():
    x, y = torch.arange(129.0).reshape(129, 1), torch.arange(129)
    a, b = BatchLoader(x, y, 64, seed=5), BatchLoader(x, y, 64, seed=5)
    first = [yb.tolist() for _, yb in a]
    assert first == [yb.tolist() for _, yb in b]
    assert [len(v) for v in first] == [64, 64] and len(a) == 2  # the lone 129th is dropped
    assert first != [yb.tolist() for _, yb in a]  # epoch 2 is another order
    assert first != [yb.tolist() for _, yb in BatchLoader(x, y, 64, seed=6)]
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in BatchLoader(x, y, 64, seed=0))


@pytest.mark.parametrize("outcome, status, text", [
    (ChildOutcome([{"stage": "train_error"}], timed_out=True), "timeout", "wall-clock limit during train"),
    (ChildOutcome([{"stage": "train_error"}], signal=signal.SIGXCPU), "timeout", "CPU-time"),
    (ChildOutcome([{"stage": "build_error"}], signal=signal.SIGKILL), "memory_error", "SIGKILL"),
    (ChildOutcome([{"stage": "shape_error"}], signal=signal.SIGSEGV), "shape_error", "SIGSEGV"),
    (ChildOutcome([{"stage": "train_setup"}], exit_code=0), "build_error", "exited with code 0"),
    (ChildOutcome([{"stage": "eval"}], signal=signal.SIGBUS), "train_error", "SIGBUS"),
    (ChildOutcome([{"stage": "train_error"}, {"refused": "os.fork()"}], signal=signal.SIGSEGV),
     "policy_violation", "os.fork"),
    (ChildOutcome([{"result": {"status": "build_error", "message": "no Net", "seed": 9}}]), "build_error", "no Net"),
    # A child cannot score itself: ok / low_accuracy are decided from its predictions only.
    (ChildOutcome([{"result": {"status": "ok", "accuracy": 0.5}}]), "train_error", "malformed"),
    (ChildOutcome([{"result": {"status": "low_accuracy"}}]), "train_error", "malformed"),
    (ChildOutcome([{"result": {"status": "pwned"}}]), "train_error", "malformed"),
    (ChildOutcome([{"result": {"status": "trained"}, "predictions": "AAAA"}]), "train_error", "malformed predictions"),
    (ChildOutcome([{"result": {"status": "trained"}, "predictions": 7}]), "train_error", "malformed predictions"),
    (ChildOutcome([{"refused": "os.fork()"}, {"result": {"status": "trained"}, "predictions": ""}]),
     "policy_violation", "os.fork"),
])
def test_child_endings_map_to_statuses(outcome, status, text):
    r, raw = outcome_result(outcome, seed=2, limits=Limits(timeout_s=7), n_test=3)
    assert r.status == status and r.status in STATUSES and text in r.message and r.seed == 2 and raw is None


def test_untrusted_child_fields_are_bounded_and_predictions_pass_unscored():
    """What the child says about itself is kept only within bounds; predictions of the
    right size pass through unscored (train_error until the trusted side scores them)."""
    raw = np.array([0, 3, 1], "<i4").tobytes()
    forged = {"status": "trained", "accuracy": 1.0, "params": 10**30, "flops": -5, "loss": "low",
              "train_seconds": 1e9, "eval_seconds": 0.01, "seed": 99}
    outcome = ChildOutcome([{"result": forged, "predictions": base64.b64encode(raw).decode()}], exit_code=0, wall_s=2.0)
    r, got = outcome_result(outcome, seed=2, limits=Limits(), n_test=3)
    assert got == raw and r.status == "train_error" and math.isnan(r.accuracy)
    assert (r.params, r.flops, r.seed, r.eval_seconds) == (-1, -1, 2, 0.01)
    assert math.isnan(r.loss) and math.isnan(r.train_seconds)  # a string; longer than the child lived
    scored = score(dataclasses.asdict(r), got, np.array([0, 3, 2]), num_classes=4)
    assert (scored.status, scored.accuracy) == ("ok", 2 / 3)
    assert score(dataclasses.asdict(r), got, np.array([0, 3, 2]), num_classes=3).status == "train_error"  # 3 > 2
    assert "malformed" in score(dataclasses.asdict(r), got[:-2], np.array([0, 3, 2]), num_classes=4).message


def test_test_split_is_shown_in_a_secret_order(mnist):
    """mnist5k's test split is sorted by class: predicting 10 * i // n for image i would
    score 100% in source order; in the order the workers see it scores about chance."""
    labels, images = mnist.y_test.numpy(), mnist.x_test.numpy()
    n = len(labels)
    by_position = np.arange(n) * 10 // n
    assert np.mean(by_position == labels) == 1.0
    shown = labels[secret_order(labels, images)]
    chance_sd = math.sqrt(0.1 * 0.9 / n)
    assert abs(np.mean(by_position == shown) - 0.1) < 5 * chance_sd
    assert train_copies_in_test(mnist.x_train.numpy(), images) == 0


# --------------------------------------------------------------------------- the two exploits

ORDER_EXPLOIT = BASE.replace("        #FORWARD\n", """        if not self.training and len(x) > 2:  # the test pass (the shape probe has 2 images)
            seen = getattr(self, 'seen', 0)
            self.seen = seen + len(x)
            position = (torch.arange(seen, seen + len(x)) * 10) // 1000
            return torch.nn.functional.one_hot(position.clamp(max=9), 10).float()
""")


def test_test_set_order_tells_a_candidate_nothing(pool, mnist):
    """mnist5k's test split is sorted by class; answering by position scores chance."""
    [r] = pool.evaluate(ORDER_EXPLOIT)
    n = len(mnist.y_test)
    assert r.status == "low_accuracy" and abs(r.accuracy - 0.1) < 5 * math.sqrt(0.1 * 0.9 / n), r


def test_dataset_files_are_unreadable_to_candidates(pool, mnist):
    """The nearest-neighbour-on-the-cached-labels exploit, and the raw file, by Python and
    by torch's native reader."""
    from cem_nas.confinement import landlock_abi
    cache, raw = mnist.info["cache_file"], mnist.info["source"]
    reads = [f"torch.load({cache!r})"]
    if landlock_abi() >= 1:
        reads += [f"torch.from_file({cache!r}, size=64, dtype=torch.uint8)",
                  f"torch.from_file({raw!r}, size=64, dtype=torch.uint8)"]
    for read in reads:
        code = BASE.replace("        #INIT\n", f"        self.stolen = {read}\n")
        [r] = pool.evaluate(code)
        assert r.status == "policy_violation", (read, r)
