"""Store: per-cycle netCDF schema, atomic writes, load over cycles, clear errors."""
import math

import netCDF4
import numpy as np
import pytest
import xarray as xr

from cem_nas.hooks import Instrumentation
from cem_nas.records import STATUSES
from cem_nas.store import RunStore, StoreError, atomic_write_text, cycle_dataset, load
from test_hooks import make_record


def write_cycles(root, n_cands=(6, 4)):
    store = RunStore(root)
    store.create("x = 1\n")
    hook = Instrumentation()
    for t, n in enumerate(n_cands):
        scores = np.linspace(0.3, 0.9, n)
        scores[0] = math.nan
        rec = make_record(t, scores, reps={1: [0.4], 2: [0.5], 3: [0.62]})
        rec.candidates[1].prompt = "line one\nünïcode ✓"
        rec.candidates[1].code = ""
        ds = cycle_dataset(rec, hook.after_cycle(rec), hook.variables, {"run_name": "r", "config": "x = 1\n"})
        store.write_cycle(ds)
        store.save_state({"cycles_done": t + 1})
    return store


def test_schema_attrs_and_strings(tmp_path):
    store = write_cycles(tmp_path / "run")
    ds = load(store.root)
    assert dict(ds.sizes) == {"cycle": 2, "cand": 6, "rep": 2, "status_kind": len(STATUSES)}
    for name, var in ds.data_vars.items():
        assert "units" in var.attrs and var.attrs.get("description"), name
    assert ds.prompt.sel(cycle=0, cand=1).item() == "line one\nünïcode ✓"
    assert ds.status.sel(cycle=0, cand=0).item() == "build_error"
    with netCDF4.Dataset(store.cycle_path(0)) as nc:  # text is stored as variable-length strings
        assert nc["code"].datatype.dtype is str and nc["status"].datatype.dtype is str
    # cycle 1 had 4 candidates: padded with "" for text, NaN for scores, -1 for ints
    assert ds.status.sel(cycle=1, cand=5).item() == "" and math.isnan(ds.score.sel(cycle=1, cand=5))
    assert ds.params.sel(cycle=1, cand=5).item() == -1
    assert ds.rep_score.sel(cycle=0, cand=1, rep=1).item() == 0.4
    assert ds.rep_score.sel(cycle=0, cand=1, rep=0).item() == ds.score.sel(cycle=0, cand=1).item()
    assert int(ds.status_count.sel(cycle=0, status_kind="ok")) == 5
    assert ds.is_elite.dtype == bool and ds.in_E.dtype == bool
    assert ds.attrs["run_name"] == "r"


def test_load_reads_only_committed_cycles(tmp_path):
    store = write_cycles(tmp_path / "run")
    store.save_state({"cycles_done": 1})  # cycle 1's file is the leftover of an interrupted cycle
    assert load(store.root).sizes["cycle"] == 1


def test_corrupt_cycle_file_names_the_file_and_the_fix(tmp_path):
    store = write_cycles(tmp_path / "run")
    path = store.cycle_path(1)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(StoreError, match=r"cycle_0001.nc is corrupt or partial.*delete it and continue the run with --resume"):
        load(store.root)


def test_missing_cycle_file_and_non_run_dir(tmp_path):
    store = write_cycles(tmp_path / "run")
    store.cycle_path(0).unlink()
    with pytest.raises(StoreError, match="cycle_0000.nc is missing"):
        load(store.root)
    with pytest.raises(StoreError, match="not a run directory"):
        load(tmp_path / "nothing")


def test_create_refuses_an_existing_run(tmp_path):
    store = write_cycles(tmp_path / "run")
    with pytest.raises(StoreError, match="already holds a run.*--resume"):
        RunStore(store.root).create("y = 2\n")
    RunStore(store.root).create("y = 2\n", overwrite=True)
    assert not store.cycle_path(0).exists() and (store.root / "config.toml").read_text() == "y = 2\n"


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")


    with pytest.raises(TypeError):
        atomic_write_text(path, 123)  # write() refuses a non-str: the old file must stay
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary left behind


def test_discard_leftovers_removes_only_a_killed_writer_s_temporaries(tmp_path):
    store = write_cycles(tmp_path / "run")
    leftovers = [store.cycles_dir / ".cycle_0001.nc.x1.tmp", store.root / ".state.json.x2.tmp"]
    for path in leftovers:
        path.write_text("half")
    half_adapter = store.adapters_dir / ".cycle_0001.abc"
    half_adapter.mkdir(parents=True)
    kept = {p for p in store.root.rglob("*")} - {*leftovers, half_adapter}
    assert set(store.discard_leftovers()) == {*leftovers, half_adapter}
    assert set(store.root.rglob("*")) == kept
    assert load(store.root).sizes["cycle"] == 2


def test_adapter_save_is_atomic(tmp_path):
    store = RunStore(tmp_path / "run")
    store.create("")

    def failing(directory):
        (directory / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.save_adapter(0, failing)
    assert not store.adapter_path(0).exists() and list(store.adapters_dir.iterdir()) == []
    store.save_adapter(0, lambda d: (d / "w").write_text("ok"))
    assert (store.adapter_path(0) / "w").read_text() == "ok"


def test_bad_hook_value_shape_is_refused(tmp_path):
    rec = make_record(0, [0.5, 0.6])
    with pytest.raises(ValueError, match="hook value 'bad' has shape"):
        cycle_dataset(rec, {"bad": np.zeros(5)}, {}, {})
    ds = cycle_dataset(rec, {"mine": 3.0}, {}, {})
    assert isinstance(ds, xr.Dataset) and ds.mine.attrs["description"] == "value from a user hook"
