"""Read run stores, test the convergence claims, plot, and write the report.

``analysis.load(run_dir or [run_dirs])`` gives one xarray Dataset (a ``run`` dim for
several runs; ``analysis.load_grid`` for an elite_fraction x novelty_threshold x seed
ablation); ``analysis.claims`` turns it into verdicts; ``python -m analysis.report
RUN_DIR [RUN_DIR ...]`` writes ``report.md`` and PNG figures.
"""
from analysis.load import as_runs, load, load_grid

__all__ = ["as_runs", "load", "load_grid"]
