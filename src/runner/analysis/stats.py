"""The uncertainty of a reported figure: a mean, a slope, a ratio, each with its 95 % interval and
its n.

    mean_ci          x̄ ± t_{n−1}·s/√n (Student t: exact for normal data, right for small n)
    regression       least-squares y = a + b·x; b ± t_{n−2}·se(b), R² (scipy.stats.linregress)
    rms_interval     the interval of σ from an RMS d of n values: n·d²/σ² ~ χ²_n for independent
                     normal values of std σ, so σ ∈ [d·√(n/χ²_{n, 0.975}), d·√(n/χ²_{n, 0.025})]
    ratio_of_means   ȳ/x̄ of paired values, Fieller's interval: the R with
                     (ȳ − R·x̄)² ≤ t²_{n−1}·(s_yy − 2R·s_xy + R²·s_xx)/n; unbounded (None) when x̄
                     is not clearly away from 0 (x̄² ≤ t²·s_xx/n): such a ratio has no finite
                     interval

Each interval assumes independent draws: give one value per run (a seed), not one per validation of
the same run, whose values are correlated; n says how many stand behind the number. scipy supplies
the t quantiles and the regression; it is imported inside the functions, so training never loads it.
"""

from __future__ import annotations

import math

LEVEL = 0.95


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided Student t quantile t_{df, (1 + level)/2}."""
    from scipy import stats

    return float(stats.t.ppf((1 + level) / 2, df))


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_ci(values, level: float = LEVEL) -> dict:
    """{"mean", "lo", "hi", "sd", "n"} over the finite values; lo/hi None below 2 values."""
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "sd": None, "n": 0}
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "sd": None, "n": 1}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": n}


def _pairs(x, y) -> tuple[list[float], list[float]]:
    keep = [(a, b) for a, b in zip(x, y) if None not in (a, b) and math.isfinite(a + b)]
    return [float(a) for a, _ in keep], [float(b) for _, b in keep]


def regression(x, y, level: float = LEVEL) -> dict:
    """{"slope", "slope_lo", "slope_hi", "intercept", "r2", "n"} of y = a + b·x over the finite
    pairs; None below 3 pairs or with x constant."""
    xs, ys = _pairs(x, y)
    n = len(xs)
    empty = {"slope": None, "slope_lo": None, "slope_hi": None, "intercept": None, "r2": None}
    if n < 3 or max(xs) == min(xs):
        return {**empty, "n": n}
    from scipy import stats

    fit = stats.linregress(xs, ys)
    half = t_quantile(n - 2, level) * fit.stderr
    return {
        "slope": float(fit.slope),
        "slope_lo": float(fit.slope - half),
        "slope_hi": float(fit.slope + half),
        "intercept": float(fit.intercept),
        "r2": float(fit.rvalue**2),
        "n": n,
    }


def ratio_of_means(y, x, level: float = LEVEL) -> dict:
    """{"ratio", "lo", "hi", "n"}: ȳ/x̄ of the finite pairs and Fieller's interval (module
    docstring); lo/hi None below 2 pairs or where the interval is unbounded."""
    xs, ys = _pairs(x, y)
    n = len(xs)
    if n == 0 or sum(xs) == 0:
        return {"ratio": None, "lo": None, "hi": None, "n": n}
    mx, my = sum(xs) / n, sum(ys) / n
    out = {"ratio": my / mx, "lo": None, "hi": None, "n": n}
    if n < 2:
        return out
    sxx = sum((a - mx) ** 2 for a in xs) / (n - 1)
    syy = sum((b - my) ** 2 for b in ys) / (n - 1)
    sxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / (n - 1)
    t2n = t_quantile(n - 1, level) ** 2 / n
    # (ȳ − R·x̄)² = t²/n·(s_yy − 2R·s_xy + R²·s_xx), a quadratic a·R² + b·R + c = 0
    a = mx * mx - t2n * sxx
    b = -2 * (mx * my - t2n * sxy)
    c = my * my - t2n * syy
    disc = b * b - 4 * a * c
    if a <= 0 or disc < -1e-12 * b * b:  # a double root may round just below 0
        return out
    root = math.sqrt(max(disc, 0.0))
    out["lo"], out["hi"] = (-b - root) / (2 * a), (-b + root) / (2 * a)
    return out


def rms_interval(value: float | None, n: int | None, level: float = LEVEL) -> tuple:
    """(lo, hi) of σ from the RMS `value` of n independent normal values of std σ (module
    docstring); (None, None) without a value or below 2 values."""
    if value is None or not n or n < 2:
        return None, None
    from scipy import stats

    tail = (1 - level) / 2
    upper, lower = stats.chi2.ppf(1 - tail, n), stats.chi2.ppf(tail, n)
    return value * math.sqrt(n / upper), value * math.sqrt(n / lower)
