"""Input checks and output shaping shared by the theory modules."""
from __future__ import annotations

import numpy as np
from scipy import stats


def check_level(level) -> float:
    """A confidence level in (0, 1), as float; anything else is refused with a hint."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), e.g. 0.95; got {level!r}")
    return level


def normal_quantile(level) -> float:
    """Two-sided standard-normal critical value z_{(1+level)/2}."""
    return float(stats.norm.ppf(0.5 + check_level(level) / 2.0))


def scalar_or_array(x):
    """Plain float for 0-d results, the array otherwise (so scalars in give scalars out)."""
    return float(x) if np.ndim(x) == 0 else x
