"""Run directory: resolved config, one netCDF per cycle, adapters, resume state.

Layout (DESIGN.md, "Store")::

    runs/<name>/config.toml            resolved config
    runs/<name>/cycles/cycle_NNNN.nc   one xarray Dataset per cycle
    runs/<name>/adapters/cycle_NNNN/   sampler parameters after that cycle's update
    runs/<name>/state.json             everything needed to resume

Every file is written atomically (temporary file in the same directory, fsync,
``os.replace``), so a kill at any moment leaves only complete files. ``state.json`` is
written last in a cycle and is the commit point: a cycle exists once ``state.json``
counts it; a cycle file beyond that count is the leftover of an interrupted cycle and is
rewritten when the cycle is run again.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cem_nas.hooks import status_counts
from cem_nas.records import STATUSES, CycleRecord

STATE_FILE = "state.json"
CONFIG_FILE = "config.toml"

#: Candidate variables the loop writes itself: name -> (units, description).
CANDIDATE_VARIABLES = {
    "status": ("", "final status of the candidate (one of the status_kind coordinate)"),
    "message": ("", "why the candidate failed, or whose repeat it is; empty for a new ok candidate"),
    "baseline": ("", "name of the architecture the proposal edits"),
    "prompt": ("", "prompt given to the sampler"),
    "response": ("", "raw sampler output"),
    "delta": ("", "extracted unified diff; empty in full mode or when none was found"),
    "code": ("", "the candidate's model file; empty when none could be built"),
    "apply_tier": ("", "delta application tier that succeeded (strict, recount, content, ...)"),
    "parent_cycle": ("cycle", "cycle the baseline was born in; -1 for a zoo architecture"),
    "score": ("accuracy", "proxy test accuracy of the scoring run (rep 0); NaN unless scored"),
    "novelty": ("1", "max MinHash Jaccard similarity to the archive; NaN when not checked"),
    "params": ("count", "trainable parameters; -1 when not built"),
    "flops": ("FLOP", "forward FLOPs for one input; -1 when not built"),
    "train_seconds": ("s", "proxy training time of the scoring run"),
    "gen_seconds": ("s", "sampler time for this proposal"),
    "prompt_tokens": ("token", "prompt length"),
    "completion_tokens": ("token", "completion length"),
    "delta_lines": ("line", "lines of the extracted delta"),
    "code_lines": ("line", "lines of the candidate's model file"),
    "is_elite": ("1", "selected as an elite this cycle"),
    "stop_reason": ("", "why generation ended: eos, fence (its block closed), hunks (a hunk begun past max_hunks, cut), length (token limit); empty without generation"),
    "is_new": ("1", "a new architecture: archived under this candidate's name and trained"),
    "twin": ("", "name of the archived architecture (candidate or zoo baseline) this one repeats; empty when none"),
    "score_source": ("", "where the score came from: proxy (trained), archive (the twin's), empty (no score)"),
    "hint": ("", "the kind of edit the prompt asked for (sampler.hints); empty without hints"),
    "redraws": ("count", "draws the sampler discarded for this proposal because they left its parent unchanged "
                         "(sampler.generation.redraw_unchanged); -1 in stores written before it existed"),
}


class StoreError(RuntimeError):
    """A run directory is missing, corrupt or inconsistent; the message says what to do."""


# ---------------------------------------------------------------- atomic files

def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, rename it
    over ``path``: readers see the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a store is meant to be read by others
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_dataset(path: Path, ds: xr.Dataset) -> None:
    atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


# ---------------------------------------------------------------- the per-cycle Dataset

def _text(values: list[str]) -> np.ndarray:
    # object arrays of str are written by netCDF4 as variable-length strings
    return np.array([v or "" for v in values], dtype=object)


def cycle_dataset(record: CycleRecord, hook_values: dict[str, Any],
                  variables: dict[str, tuple[str, str]], attrs: dict[str, Any]) -> xr.Dataset:
    """One cycle as a Dataset with dims (cycle=1, cand, rep, status_kind) (schema: CONTRACTS.md).

    The per-status counts use the dim ``status_kind`` (coordinate = STATUSES): a dim
    named ``status`` cannot coexist with the candidate variable ``status`` in xarray.

    ``hook_values`` are what the hooks returned: scalars become cycle variables,
    per-candidate arrays candidate variables; ``variables`` gives their units/description.
    """
    cands = record.candidates
    n = len(cands)
    cols: dict[str, np.ndarray] = {
        name: _text([getattr(c, name) for c in cands])
        for name in ("status", "message", "baseline", "prompt", "response", "delta", "code", "apply_tier",
                     "stop_reason", "twin", "score_source", "hint")
    }
    cols["parent_cycle"] = np.array([c.parent_cycle for c in cands], dtype=np.int64)
    cols["score"] = record.scores()
    cols["novelty"] = np.array([c.novelty for c in cands], dtype=float)
    cols["params"] = np.array([c.first("params", -1) for c in cands], dtype=np.int64)
    cols["flops"] = np.array([c.first("flops", -1) for c in cands], dtype=np.int64)
    cols["train_seconds"] = np.array([c.first("train_seconds", np.nan) for c in cands], dtype=float)
    cols["gen_seconds"] = np.array([c.gen_seconds for c in cands], dtype=float)
    for name in ("prompt_tokens", "completion_tokens", "delta_lines", "code_lines", "redraws"):
        cols[name] = np.array([getattr(c, name) for c in cands], dtype=np.int64)
    cols["is_elite"] = np.array([c.is_elite for c in cands], dtype=bool)
    cols["is_new"] = np.array([c.is_new for c in cands], dtype=bool)

    data_vars: dict[str, Any] = {}
    for name, values in cols.items():
        units, desc = CANDIDATE_VARIABLES[name]
        data_vars[name] = (("cycle", "cand"), values[None, :], {"units": units, "description": desc})
    data_vars["rep_score"] = (("cycle", "cand", "rep"), record.rep_matrix()[None],
                              {"units": "accuracy", "description": "proxy accuracy per replicate seed; rep 0 = score; NaN where not taken"})
    data_vars["gamma"] = (("cycle",), [record.gamma], {"units": "accuracy", "description": "elite threshold gamma_t: lowest elite score"})
    data_vars["status_count"] = (("cycle", "status_kind"), status_counts(record)[None],
                                 {"units": "count", "description": "candidates per final status"})
    if record.zoo:  # run constants (the same in every cycle file): the reference points
        data_vars["zoo_score"] = (("zoo",), [r.accuracy if r.scored else np.nan for r in record.zoo.values()],
                                  {"units": "accuracy", "description": "proxy score of each zoo baseline, scored "
                                   "once at the start of the run (seed 0, the candidates' proxy)"})
        data_vars["zoo_status"] = (("zoo",), _text([r.status for r in record.zoo.values()]),
                                   {"units": "", "description": "status of each zoo baseline's proxy run"})
    for name, value in hook_values.items():
        units, desc = variables.get(name, ("", "value from a user hook"))
        arr = np.asarray(value)
        if arr.ndim == 0:
            data_vars[name] = (("cycle",), [float(arr)], {"units": units, "description": desc})
        elif arr.shape == (n,):
            data_vars[name] = (("cycle", "cand"), arr[None, :], {"units": units, "description": desc})
        else:
            raise ValueError(f"hook value {name!r} has shape {arr.shape}; expected a scalar or one value per candidate ({n})")
    coords = {"cycle": [record.cycle], "cand": np.arange(n), "rep": np.arange(record.replicates),
              "status_kind": np.array(STATUSES, dtype=object)}
    if record.zoo:
        coords["zoo"] = np.array(list(record.zoo), dtype=object)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


# ---------------------------------------------------------------- the run directory

class RunStore:
    """A run directory: create it, add cycles and adapters, save and read resume state."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cycles_dir = self.root / "cycles"
        self.adapters_dir = self.root / "adapters"

    def create(self, config_text: str, overwrite: bool = False) -> None:
        """Start a fresh run directory with the resolved config."""
        if self.has_state() or any(self.cycles_dir.glob("cycle_*.nc")):
            if not overwrite:
                raise StoreError(f"run directory {self.root} already holds a run; continue it with "
                                 f"--resume {self.root}, pick another --name, or pass --overwrite true")
            shutil.rmtree(self.root)
        self.cycles_dir.mkdir(parents=True, exist_ok=True)
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / CONFIG_FILE, config_text)

    def write_config(self, config_text: str) -> None:
        atomic_write_text(self.root / CONFIG_FILE, config_text)

    def has_state(self) -> bool:
        return (self.root / STATE_FILE).exists()

    def cycle_path(self, cycle: int) -> Path:
        return self.cycles_dir / f"cycle_{cycle:04d}.nc"

    def adapter_path(self, cycle: int) -> Path:
        return self.adapters_dir / f"cycle_{cycle:04d}"

    def write_cycle(self, ds: xr.Dataset) -> Path:
        path = self.cycle_path(int(ds.cycle.values[0]))
        atomic_write_dataset(path, ds)
        return path

    def save_adapter(self, cycle: int, save: Any) -> Path:
        """Call ``save(directory)`` into a temporary directory, then rename it into place."""
        final = self.adapter_path(cycle)
        tmp = Path(tempfile.mkdtemp(dir=self.adapters_dir, prefix=f".{final.name}."))
        try:
            save(tmp)
            if final.exists():  # leftover of an interrupted cycle that is being redone
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.adapters_dir)
        return final

    def discard_leftovers(self) -> list[Path]:
        """Remove the temporary files and adapter directories of a writer killed mid-write
        (an atomic write's ``.NAME.*.tmp``, a half-saved ``.cycle_NNNN.*`` adapter) and return
        them. Only for the run's one writer, on resume: a reader must not call it, as the
        temporaries of a live writer look the same."""
        found = [*self.root.glob(".*.tmp"), *self.cycles_dir.glob(".*.tmp"), *self.adapters_dir.glob(".cycle_*")]
        for path in found:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return found

    def save_state(self, state: dict) -> None:
        atomic_write_text(self.root / STATE_FILE, json.dumps(state, allow_nan=True))

    def load_state(self) -> dict:
        path = self.root / STATE_FILE
        if not path.exists():
            raise StoreError(f"{path} does not exist: {self.root} holds no completed cycle to resume from; "
                             "start the run again without --resume")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{path} is corrupt ({e}); the run cannot be resumed") from None

    def config_text(self) -> str:
        path = self.root / CONFIG_FILE
        if not path.exists():
            raise StoreError(f"{path} does not exist: {self.root} is not a run directory")
        return path.read_text()


def open_cycle(path: Path) -> xr.Dataset:
    """Read one cycle file fully into memory; a broken file gives a StoreError saying what to do."""
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return ds.load()
    except FileNotFoundError:
        raise StoreError(f"cycle file {path} is missing; resume the run with --resume {path.parent.parent} "
                         "to recompute it") from None
    except Exception as e:  # netCDF4/HDF5 raise assorted types for truncated files
        raise StoreError(f"cycle file {path} is corrupt or partial ({type(e).__name__}: {e}); delete it and "
                         f"continue the run with --resume {path.parent.parent}") from None


def load(run_dir: str | Path) -> xr.Dataset:
    """All completed cycles of a run as one Dataset concatenated over ``cycle``.

    With a ``state.json`` only the cycles it counts are read (a file beyond that is the
    leftover of an interrupted cycle); without one, every cycle file present.
    """
    store = RunStore(run_dir)
    if not store.cycles_dir.is_dir():
        raise StoreError(f"{store.root} is not a run directory (no cycles/ folder)")
    if (store.root / STATE_FILE).exists():
        paths = [store.cycle_path(c) for c in range(store.load_state()["cycles_done"])]
    else:
        paths = sorted(store.cycles_dir.glob("cycle_*.nc"))
    if not paths:
        raise StoreError(f"{store.root} has no completed cycle yet")
    parts = [open_cycle(p) for p in paths]
    if len(parts) == 1:
        return parts[0]
    # cand and rep lengths may differ between cycles: outer join pads with NaN / fill values
    return xr.concat(parts, dim="cycle", data_vars="minimal", coords="minimal", join="outer",
                     combine_attrs="override", fill_value=_fill_values(parts))


def _fill_values(parts: list[xr.Dataset]) -> dict[str, Any]:
    """Padding per variable type: "" for text, -1 for integers, False for flags, NaN else;
    over the variables of every part (a cycle written before a variable existed lacks it)."""
    fills: dict[str, Any] = {}
    for name, var in ((n, v) for ds in parts for n, v in ds.data_vars.items()):
        kind = var.dtype.kind
        fills[name] = "" if kind in "OUS" else -1 if kind in "iu" else False if kind == "b" else np.nan
    return fills
