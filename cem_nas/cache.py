"""The user cache every prepared artefact lives under (datasets, corpus, model, adapters).

One root so a user can move or clear all of it with one variable: ``$CEM_NAS_CACHE``,
default ``~/.cache/cem_nas``.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CEM_NAS_CACHE"


def cache_root() -> Path:
    """``$CEM_NAS_CACHE`` or ``~/.cache/cem_nas``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cem_nas"
