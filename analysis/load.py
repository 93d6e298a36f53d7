"""Read run stores into one xarray Dataset.

One run directory is the loop's per-cycle netCDF files concatenated over ``cycle``
(``cem_nas.store.load``). Several runs concatenate along a ``run`` dimension; an
ablation grid concatenates along ``elite_fraction``, ``novelty_threshold`` and
``seed``. Runs rarely have the same number of candidates per cycle, so every run is
padded to a common shape first with an explicit "absent" value per type ("" for
text, NaN for numbers, -1 for integers, False for flags) rather than letting xarray
turn strings into NaN.

The analysis itself works on the ``run`` view (:func:`as_runs`): whatever across-run
dims a Dataset has (``run`` or the grid's) are stacked into one ``run`` dim.
"""
from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import xarray as xr

#: The dims an ablation grid is indexed by, in this order.
GRID_DIMS = ("elite_fraction", "novelty_threshold", "seed")

#: Dims that run across runs; every other dim belongs to one run's store.
ACROSS_DIMS = ("run", *GRID_DIMS)


def load(source: str | Path | Iterable[str | Path]) -> xr.Dataset:
    """One Dataset from a run directory, a saved Dataset (.nc), or a list of either.

    A single run keeps the store's dims; a list gets a ``run`` dim whose coordinate
    is the run name, with per-run coords ``mode``, ``sampler`` and, when the resolved
    config states them, ``elite_fraction`` and ``novelty_threshold``.
    """
    if isinstance(source, (str, Path)):
        return _load_one(Path(source))
    paths = [Path(p) for p in source]
    if not paths:
        raise ValueError("load() needs at least one run directory or .nc file")
    if len(paths) == 1:
        return _load_one(paths[0])
    runs = [_load_one(p) for p in paths]
    names = _unique_names([ds.attrs.get("run_name") or p.name for ds, p in zip(runs, paths)])
    return concat_runs(runs, "run", names)


def load_grid(cells: Mapping[tuple[float, float, int], str | Path | xr.Dataset]) -> xr.Dataset:
    """Ablation Dataset with dims (elite_fraction, novelty_threshold, seed, cycle, ...).

    ``cells`` maps (elite_fraction, novelty_threshold, seed) to a run directory or an
    already loaded run. Cells missing from the mapping are filled with absent values,
    so a partially finished grid still loads.
    """
    if not cells:
        raise ValueError("load_grid() needs at least one cell")
    loaded = {key: (val if isinstance(val, xr.Dataset) else _load_one(Path(val))) for key, val in cells.items()}
    axes = [sorted({key[i] for key in loaded}) for i in range(len(GRID_DIMS))]
    sizes = _common_sizes(loaded.values())
    template = _pad(next(iter(loaded.values())), sizes)
    empty = _absent_like(template)
    planes = []
    for ef in axes[0]:
        rows = []
        for nt in axes[1]:
            seeds = [_pad(loaded[(ef, nt, s)], sizes) if (ef, nt, s) in loaded else empty for s in axes[2]]
            rows.append(xr.concat(seeds, dim=xr.DataArray(axes[2], dims="seed", name="seed"),
                                  data_vars="all", coords="minimal", compat="override"))
        planes.append(xr.concat(rows, dim=xr.DataArray(axes[1], dims="novelty_threshold", name="novelty_threshold"),
                                data_vars="all", coords="minimal", compat="override"))
    grid = xr.concat(planes, dim=xr.DataArray(axes[0], dims="elite_fraction", name="elite_fraction"),
                     data_vars="all", coords="minimal", compat="override")
    grid.attrs = {k: v for k, v in template.attrs.items() if k not in ("run_name", "seed", "config")}
    return grid


def concat_runs(runs: list[xr.Dataset], dim: str, labels: list) -> xr.Dataset:
    """Concatenate single runs along ``dim`` after padding them to a common shape."""
    sizes = _common_sizes(runs)
    out = xr.concat([_pad(ds, sizes) for ds in runs], dim=xr.DataArray(labels, dims=dim, name=dim),
                    data_vars="all", coords="minimal", compat="override", join="outer")
    metas = [run_metadata(ds) for ds in runs]
    for key in metas[0]:
        values = [m[key] for m in metas]
        if any(v is not None for v in values):
            out = out.assign_coords({key: (dim, np.array(values, dtype=object if isinstance(
                next(v for v in values if v is not None), str) else float))})
    out.attrs = {}
    return out


def as_runs(ds: xr.Dataset) -> xr.Dataset:
    """The Dataset with every across-run dim stacked into one ``run`` dim.

    A single run gets a ``run`` dim of length 1. Grid cells that were never run (no
    cycle has ``n_cand`` > 0) are dropped.
    """
    extra = [d for d in ds.dims if d in ACROSS_DIMS]
    if not extra:
        name = ds.attrs.get("run_name", "run")
        out = ds.expand_dims(run=[name])
        meta = run_metadata(ds)
        return out.assign_coords({k: ("run", [v]) for k, v in meta.items() if v is not None})
    if extra == ["run"]:
        out = ds
    else:
        stacked = ds.stack(run=extra)
        levels = {d: ("run", stacked[d].values) for d in extra}
        labels = [_cell_label(extra, key) for key in zip(*(stacked[d].values for d in extra))]
        out = stacked.drop_vars(["run", *extra]).assign_coords(run=labels, **levels)
    if "n_cand" in out:
        ran = (out["n_cand"].fillna(0) > 0).any("cycle")
        out = out.isel(run=np.flatnonzero(ran.values))
    return out


def run_metadata(ds: xr.Dataset) -> dict:
    """mode, sampler, elite_fraction, novelty_threshold and duplicates (how the run read
    repeats; None for a store that predates the choice) of one run, from its attrs."""
    config = _parse_config(ds.attrs.get("config", ""))
    out = {}
    for key in ("mode", "sampler", "elite_fraction", "novelty_threshold", "duplicates"):
        value = ds.attrs.get(key)
        out[key] = value if value not in (None, "") else _find_key(config, key)
    if out["sampler"] is None:  # the resolved config names it [sampler] kind
        out["sampler"] = _find_key(config.get("sampler", {}), "kind")
    return out


def _load_one(path: Path) -> xr.Dataset:
    if path.is_file() and path.suffix == ".nc":
        with xr.open_dataset(path) as ds:
            return ds.load()
    from cem_nas import store  # the loop owns the on-disk format (and says what is wrong with a directory)
    return store.load(path)


def _common_sizes(runs: Iterable[xr.Dataset]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for ds in runs:
        for dim, n in ds.sizes.items():
            sizes[dim] = max(sizes.get(dim, 0), n)
    return sizes


def _pad(ds: xr.Dataset, sizes: Mapping[str, int]) -> xr.Dataset:
    """Pad index dims (cycle, cand, rep) to ``sizes`` with per-type absent values."""
    pads = {d: (0, sizes[d] - ds.sizes[d]) for d in ("cycle", "cand", "rep")
            if d in ds.dims and sizes.get(d, 0) > ds.sizes[d]}
    if not pads:
        return ds
    out = {}
    for name, var in ds.data_vars.items():
        widths = {d: w for d, w in pads.items() if d in var.dims}
        if not widths:
            out[name] = var
            continue
        out[name] = var.pad(widths, mode="constant", constant_values=_absent_value(var.dtype))
    coords = {}
    for d in pads:
        if d in ds.coords and np.issubdtype(ds[d].dtype, np.number):
            coords[d] = np.arange(sizes[d]) if d != "cycle" else _extend(ds[d].values, sizes[d])
    rest = {k: v for k, v in ds.coords.items() if k not in pads and not (set(v.dims) & set(pads))}
    res = xr.Dataset(out, attrs=ds.attrs)
    return res.assign_coords({**rest, **coords})


def _extend(values: np.ndarray, n: int) -> np.ndarray:
    last = int(values[-1]) if len(values) else -1
    return np.concatenate([values, np.arange(last + 1, last + 1 + n - len(values))])


def _absent_value(dtype: np.dtype):
    if dtype.kind in "OUS":
        return ""
    if dtype.kind == "b":
        return False
    if dtype.kind in "iu":
        return -1
    return np.nan


def _absent_like(ds: xr.Dataset) -> xr.Dataset:
    out = ds.copy(deep=True)
    for name, var in out.data_vars.items():
        var.values[...] = _absent_value(var.dtype)
    if "n_cand" in out:
        out["n_cand"].values[...] = 0
    return out


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _cell_label(dims: list[str], key: tuple) -> str:
    return ",".join(f"{d}={v}" for d, v in zip(dims, key))


def _parse_config(text: str) -> dict:
    if not text:
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}


def _find_key(tree: dict, key: str):
    """The first value stored under ``key`` anywhere in a nested config."""
    if key in tree and not isinstance(tree[key], dict):
        return tree[key]
    for value in tree.values():
        if isinstance(value, dict):
            found = _find_key(value, key)
            if found is not None:
                return found
    return None
