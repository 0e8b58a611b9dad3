"""Operating-point figures that the light runtime needs too: THE implementation of the Wilson interval,
the threshold picker, the confusion counts and the per-diagnosis sensitivity for the whole package.

They live here, beside the runtime, because ``dermsort validate`` (runtime/site.py) must not import
train/; the training package's ``metrics`` module re-exports them and adds what needs scikit-learn or matplotlib (AUC,
plots). ``tests/train/test_one_metrics_module.py`` fails if a second copy appears elsewhere. Only numpy is imported.

Convention everywhere: an image goes to benign/ only when ``p_malignant < threshold``; sensitivity
is the share of malignant images sent to review, work reduction the share of all images sent to benign.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

CI_METHOD = "wilson"


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> list[float] | None:
    """Wilson score interval for a proportion (sound at 0 and n, unlike the normal interval); None when n <= 0."""
    if n <= 0:
        return None
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 and n the bounds are exactly 0 and 1 (the formula leaves ~1e-17 of rounding there)
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return [low, high]


def clopper_pearson_ci(successes: int, n: int, confidence: float = 0.95) -> list[float] | None:
    """Exact (Clopper-Pearson) interval for a proportion; None when n == 0."""
    if n == 0:
        return None
    from scipy.stats import beta

    alpha = 1 - confidence
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return [low, high]


def proportion_ci(successes: int, n: int, method: str = CI_METHOD) -> list[float] | None:
    return {"wilson": wilson_ci, "clopper-pearson": clopper_pearson_ci}[method](successes, n)


def choose_threshold(malignant: Sequence[int], p_malignant: Sequence[float], target_sensitivity: float,
                     max_benign: int | None = None) -> float:
    """A threshold whose sensitivity on these images is >= target, as large as possible (p < threshold -> benign).

    ``max_benign`` caps it further: never more than ``max_benign`` of these images sent to benign/ (the
    export parity gate passes the reference's count, so a derived artifact is not handed a higher
    specificity than the reference on the set that measures it; see export/parity.py). At least one
    malignant image always stays in review, so a target of 0 means "the most suspicious one".
    Raises ValueError when there is no malignant image to calibrate on.
    """
    y = np.asarray(malignant, dtype=int)
    p = np.asarray(p_malignant, dtype=float)
    positives = np.sort(p[y == 1])[::-1]
    if len(positives) == 0:
        raise ValueError("no malignant images to calibrate the threshold on")
    if not 0 <= target_sensitivity <= 1:
        raise ValueError(f"target sensitivity {target_sensitivity} is outside [0, 1]")
    needed = min(len(positives), max(1, math.ceil(target_sensitivity * len(positives) - 1e-9)))
    # the needed-th highest malignant score must stay caught (p >= threshold); anything above it loses one.
    lowest_caught = float(positives[needed - 1])
    if max_benign is not None and max_benign < len(p):
        # #{p < scores[b]} <= b with scores sorted ascending: never more benign decisions than max_benign
        lowest_caught = min(lowest_caught, float(np.sort(p)[max(0, max_benign)]))
    # Sitting exactly on that score would let a 1e-7 difference between backends flip it to benign, so
    # take the middle of the gap down to the next lower score: the same decisions here, with a margin.
    below = p[p < lowest_caught]
    threshold = (lowest_caught + float(below.max())) / 2 if len(below) else lowest_caught / 2
    # a threshold of 0 would be rejected by the metadata schema; the smallest positive float keeps every image in review
    return max(threshold, float(np.nextafter(0.0, 1.0)))


def operating_point(malignant: Sequence[int], p_malignant: Sequence[float],
                    threshold: float) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) of ``review if p >= threshold``; None where a class is absent."""
    cm = confusion(malignant, p_malignant, threshold)
    n_pos, n_neg = cm["tp"] + cm["fn"], cm["tn"] + cm["fp"]
    return (cm["tp"] / n_pos if n_pos else None), (cm["tn"] / n_neg if n_neg else None)


def confusion(malignant: Sequence[int], p_malignant: Sequence[float], threshold: float) -> dict[str, int]:
    """tn/fp/fn/tp with 'positive' = sent to review (p >= threshold); plain counts, so empty input gives zeros."""
    y = np.asarray(malignant, dtype=int)
    review = np.asarray(p_malignant, dtype=float) >= threshold
    pos, neg = y == 1, y == 0
    return {"tn": int((neg & ~review).sum()), "fp": int((neg & review).sum()),
            "fn": int((pos & ~review).sum()), "tp": int((pos & review).sum())}


#: diagnoses a triage tool must not miss, reported one by one (canonical dx codes -> report name)
DIAGNOSIS_GROUPS = {"melanoma": ("mel",), "bcc": ("bcc",), "scc/ak": ("akiec", "scc", "ak")}


def diagnosis_sensitivity(dx: Sequence[str], p_malignant: Sequence[float], threshold: float) -> dict[str, Any]:
    """Sensitivity (Wilson CI) per malignant diagnosis group: the share of each sent to review."""
    d = np.asarray(dx)
    review = np.asarray(p_malignant, dtype=float) >= threshold
    out: dict[str, Any] = {}
    for name, codes in DIAGNOSIS_GROUPS.items():
        member = np.isin(d, codes)
        n, caught = int(member.sum()), int(review[member].sum())
        out[name] = {"n": n, "sensitivity": caught / n if n else None, "sensitivity_ci": proportion_ci(caught, n),
                     "missed": n - caught}
    return out


def cases_needed(lower_bound: float, confidence: float = 0.95, limit: int = 100_000) -> int:
    """How many malignant cases, all caught (100 % sensitivity), it takes for the Wilson interval's lower
    bound to reach ``lower_bound``: the fewest cases that can support a claim of that sensitivity."""
    if not 0.0 < lower_bound < 1.0:
        raise ValueError(f"lower bound {lower_bound} is outside (0, 1)")
    n = 1
    while n < limit and wilson_ci(n, n, confidence)[0] < lower_bound:
        n += 1
    return n


def binomial_band(p: float, n: int, confidence: float = 0.99) -> tuple[int, int]:
    """The central band of counts (low, high) that Binomial(n, p) falls in with at least ``confidence``
    (exact, from the pmf): outside it, a run departs clearly from what ``p`` predicts for ``n`` images."""
    if n <= 0:
        return 0, 0
    p = min(max(float(p), 0.0), 1.0)
    if p in (0.0, 1.0):
        return (0, 0) if p == 0.0 else (n, n)
    tail = (1 - confidence) / 2
    log_pmf = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
               + (n - k) * math.log1p(-p) for k in range(n + 1)]
    pmf = np.exp(np.asarray(log_pmf))
    cdf = np.cumsum(pmf)
    low = int(np.searchsorted(cdf, tail, side="left"))  # P(X < low) < tail
    high = int(np.searchsorted(cdf, 1 - tail, side="left"))  # P(X > high) <= tail
    if low > 0 and cdf[low - 1] >= tail:
        low -= 1
    return low, min(high, n)


def quantile_summary(values: Sequence[float], levels: Sequence[float]) -> list[float]:
    """The ``levels`` quantiles of ``values`` (a compact, stable summary of a distribution of p(malignant))."""
    v = np.asarray(values, dtype=float)
    return [float(x) for x in np.quantile(v, list(levels))] if len(v) else []


def ks_distance_at(values: Sequence[float], quantiles: Sequence[float], levels: Sequence[float]) -> float | None:
    """Largest gap between the empirical CDF of ``values`` and a reference distribution known by its
    quantiles (the reference CDF is ``levels[i]`` at ``quantiles[i]``): the two-sample Kolmogorov-Smirnov
    statistic evaluated at those points (a lower bound of the full statistic, so a test on it is conservative)."""
    v = np.sort(np.asarray(values, dtype=float))
    if not len(v) or not len(quantiles):
        return None
    below = np.searchsorted(v, np.asarray(quantiles, dtype=float), side="right") / len(v)
    return float(np.max(np.abs(below - np.asarray(levels, dtype=float))))


def ks_critical(n: int, m: int, alpha: float = 0.01) -> float:
    """The two-sample Kolmogorov-Smirnov critical distance for samples of ``n`` and ``m`` (asymptotic)."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))
