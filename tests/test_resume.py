"""Kill a run with SIGKILL in the middle of a cycle, resume it, compare with an uninterrupted run.

The grammar sampler is deterministic given the loop's RNG, and proxy training on CPU with
one thread and a fixed seed is deterministic here, so the resumed store must equal the
uninterrupted one in everything but wall-clock times (variables with units "s"). On
other hardware (GPU kernels, several threads) training may differ in the last digits.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cem_nas.config import ConfigError
from cem_nas.store import load
from experiments import cem_run

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config", str(ROOT / "experiments/configs/grammar.toml"), "--cycles", "3", "--candidates", "5",
        "--baselines", "mlp", "--max-train", "300", "--max-test", "100", "--replicate-candidates", "3",
        "--progress", "false", "--workers", "1"]


def cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experiments.cem_run", *ARGS, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def cycles_done(run: Path) -> int:
    try:
        return json.loads((run / "state.json").read_text())["cycles_done"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    killed = cli("--runs-dir", str(base), "--name", "killed")
    reference = cli("--runs-dir", str(base), "--name", "reference")
    deadline = time.time() + 240
    while cycles_done(base / "killed") < 1 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # into cycle 1's proxy training: on a quiet machine sampling takes ~0.03 s and the
    # evaluation ~1 s, so 1 s after the commit could already be past the cycle's end
    time.sleep(0.3)
    os.killpg(killed.pid, signal.SIGKILL)  # the run and its sandbox workers, as a crash would
    killed.wait()
    done_at_kill = cycles_done(base / "killed")
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    return base, done_at_kill


def test_kill_then_resume_equals_uninterrupted_run(runs):
    base, done_at_kill = runs
    assert done_at_kill == 1, "the kill should land inside cycle 1"
    partial = load(base / "killed")
    assert partial.sizes["cycle"] == 1  # the interrupted cycle is not in the store
    resumed = cli("--resume", str(base / "killed"))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "store:" in out and "p_t(E)" in out
    a, b = load(base / "killed"), load(base / "reference")
    assert a.sizes == b.sizes and list(a.cycle.values) == [0, 1, 2]
    timing = {n for n, v in a.data_vars.items() if v.attrs.get("units") == "s"}
    for name in set(a.data_vars) - timing:
        x, y = a[name].values, b[name].values
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)
        else:
            assert (x == y).all(), name
    assert (a.n_cand == 5).all() and (a.status != "").all()  # each cycle once, no candidate twice
    assert not list((base / "killed" / "cycles").glob(".*.tmp"))


def test_resume_refuses_a_config_that_matters(runs, capsys):
    base, _ = runs
    code = cem_run.main(ARGS + ["--resume", str(base / "reference"), "--candidates", "7", "--elite-fraction", "0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "search.candidates: run has 5, now 7" in err and "search.elite_fraction" in err
    assert "search.cycles" in err  # named among the fields that may change


def test_resume_of_a_finished_run_is_a_no_op_and_a_fresh_start_refuses(runs, capsys):
    base, _ = runs
    assert cem_run.main(ARGS + ["--resume", str(base / "reference")]) == 0
    assert load(base / "reference").sizes["cycle"] == 3
    assert cem_run.main(ARGS + ["--runs-dir", str(base), "--name", "reference"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_of_a_missing_directory_is_clear(tmp_path, capsys):
    assert cem_run.main(["--resume", str(tmp_path / "nope")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        cem_run.resolve(cem_run.parser().parse_args(["--cycles", "0"]))
