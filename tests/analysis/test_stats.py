"""Intervals of reported figures (analysis.stats) against values worked out by hand."""

import math

import pytest

from runner.analysis.stats import mean_ci, ratio_of_means, regression, rms_interval, t_quantile

T4, T2 = 2.7764451051977987, 4.302652729911275  # t_{4, 0.975} and t_{2, 0.975}, from tables


def test_t_quantiles():
    assert t_quantile(4) == pytest.approx(T4) and t_quantile(2) == pytest.approx(T2)
    assert t_quantile(10_000) == pytest.approx(1.96, abs=1e-3)


def test_mean_with_its_student_t_interval():
    m = mean_ci([1, 2, 3, 4, 5])  # s = √2.5, se = √0.5
    assert m["mean"] == 3 and m["n"] == 5 and m["sd"] == pytest.approx(math.sqrt(2.5))
    half = T4 * math.sqrt(0.5)
    assert (m["lo"], m["hi"]) == (pytest.approx(3 - half), pytest.approx(3 + half))
    one = mean_ci([0.3, None, float("nan")])  # non-finite values do not count
    assert one == {"mean": 0.3, "lo": None, "hi": None, "sd": None, "n": 1}
    assert mean_ci([])["n"] == 0


def test_regression_slope_interval_and_r2():
    # x̄ = 1.5, ȳ = 2.75, Sxx = 5, Sxy = 5.5: b = 1.1, a = 1.1; SSE = 2.7, Syy = 8.75
    r = regression([0, 1, 2, 3], [1, 3, 2, 5])
    assert r["slope"] == pytest.approx(1.1) and r["intercept"] == pytest.approx(1.1)
    assert r["r2"] == pytest.approx(1 - 2.7 / 8.75) and r["n"] == 4
    half = T2 * math.sqrt(2.7 / 2 / 5)  # t_{n−2}·√(SSE/(n − 2)/Sxx)
    assert (r["slope_lo"], r["slope_hi"]) == (pytest.approx(1.1 - half), pytest.approx(1.1 + half))
    assert regression([1, 1, 1], [1, 2, 3])["slope"] is None  # x constant
    assert regression([1, 2], [1, 2]) == {
        "slope": None,
        "slope_lo": None,
        "slope_hi": None,
        "intercept": None,
        "r2": None,
        "n": 2,
    }


def test_ratio_of_means_with_fieller_s_interval():
    # x constant: Fieller is the t interval of ȳ divided by x̄
    r = ratio_of_means([1, 2, 4], [2, 2, 2])
    m = mean_ci([0.5, 1, 2])
    assert r["ratio"] == pytest.approx(7 / 6) and r["n"] == 3
    assert (r["lo"], r["hi"]) == (pytest.approx(m["lo"]), pytest.approx(m["hi"]))
    exact = ratio_of_means([20, 22, 24.5], [10, 11, 12.25])  # y = 2x: no doubt about the ratio
    assert (exact["lo"], exact["hi"]) == (pytest.approx(2.0), pytest.approx(2.0))
    # x̄ well away from 0: close to the delta method's ȳ/x̄ ± t·se
    x, y = [10, 11, 9, 10.5, 9.5], [20.5, 21.8, 18.3, 21.0, 19.6]
    r = ratio_of_means(y, x)
    d = [b - r["ratio"] * a for a, b in zip(x, y)]
    se = math.sqrt(sum(v * v for v in d) / 4 / 5) / (sum(x) / 5)
    assert r["lo"] == pytest.approx(r["ratio"] - T4 * se, rel=0.01)
    assert r["hi"] == pytest.approx(r["ratio"] + T4 * se, rel=0.01)
    # x̄ not clearly away from 0: a ratio, but no finite interval
    loose = ratio_of_means([1, 2, 1, 2], [1, -1, 0.5, -0.3])
    assert loose["ratio"] is not None and loose["lo"] is None and loose["hi"] is None


def test_the_interval_of_a_std_from_an_rms():
    # χ²_{29, 0.975} = 45.722, χ²_{29, 0.025} = 16.047 (tables)
    lo, hi = rms_interval(0.255, 29)
    assert lo == pytest.approx(0.255 * math.sqrt(29 / 45.722), rel=1e-4)
    assert hi == pytest.approx(0.255 * math.sqrt(29 / 16.047), rel=1e-4)
    assert rms_interval(0.2, 1) == (None, None) and rms_interval(None, 10) == (None, None)
