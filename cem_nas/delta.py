"""Unified diffs (deltas): make, parse, apply with verified fallback tiers."""
from __future__ import annotations

import difflib


def make_delta(before: str, after: str, context: int = 3) -> str:
    """Unified diff from ``before`` to ``after`` with ``a/net.py``/``b/net.py`` headers."""
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile="a/net.py",
        tofile="b/net.py",
        n=context,
    )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
