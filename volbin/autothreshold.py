"""The ImageJ / ITK family of histogram thresholds, on histograms.

Huang, intermodes, Kittler-Illingworth (minimum error), maximum entropy, moments, Rényi
entropy and Shanbhag, as ImageJ's Auto_Threshold and ITK's threshold calculators define them.
Each function takes a histogram (``hist=(counts, centers)``, like scikit-image's
``threshold_otsu(hist=...)``) or an image, and returns a threshold in the units of the bin
centres: foreground is ``value > threshold``.  `volbin.threshold` feeds them volbin's exact
streamed per-group histograms.

The methods work in bin-index units and return the centre of the last bin of the lower
class, as ITK does (``HistogramThresholdCalculator`` outputs ``GetMeasurement(bin)``, the bin
centre, and ``HistogramThresholdImageFilter`` marks ``value <= threshold`` inside): voxels
above that centre are foreground.  A histogram whose values all fall in one bin, or an empty
one, has no threshold: every function raises `VolbinDataError` for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import entr

from .errors import VolbinDataError

__all__ = [
    "threshold_huang",
    "threshold_intermodes",
    "threshold_kittler_illingworth",
    "threshold_max_entropy",
    "threshold_moments",
    "threshold_renyi_entropy",
    "threshold_shanbhag",
]

#: Histogram smoothings after which intermodes gives up (ImageJ's and ITK's limit).
MAX_SMOOTHING = 10_000
# Elements per block of the (threshold x bin) tables of Huang and Shanbhag.
_BLOCK = 2**18


def _histogram(image: Any, nbins: int, hist: Any, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 counts and bin centres, from `hist` or else from `image`.

    Raises VolbinDataError when fewer than two bins are occupied (no two classes).
    """
    if hist is None:
        if image is None:
            raise ValueError("`image` or `hist` must be given; got neither.")
        if not (isinstance(nbins, (int, np.integer)) and not isinstance(nbins, bool) and nbins >= 2):
            raise ValueError(f"`nbins` must be an int >= 2; got {nbins!r}.")
        v = np.asarray(image, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise VolbinDataError(f"{method}: the image has no finite value to threshold.")
        counts, edges = np.histogram(v, bins=int(nbins))
        centers = (edges[:-1] + edges[1:]) / 2
    elif isinstance(hist, tuple):
        if len(hist) != 2:
            raise ValueError(f"`hist` must be counts or a pair (counts, centers); got a {len(hist)}-tuple.")
        counts, centers = (np.asarray(a, dtype=np.float64) for a in hist)
    else:
        counts = np.asarray(hist, dtype=np.float64)
        centers = np.arange(counts.size, dtype=np.float64)
    if counts.ndim != 1 or centers.shape != counts.shape:
        raise ValueError(
            f"`hist` must be 1-D counts and bin centres of the same length; got shapes "
            f"{counts.shape} and {centers.shape}."
        )
    if not (np.isfinite(counts).all() and (counts >= 0).all()):
        raise ValueError("`hist` counts must be finite and non-negative.")
    if counts.size > 1:
        step = np.diff(centers)
        mean_step = (centers[-1] - centers[0]) / (centers.size - 1)
        if not (np.isfinite(centers).all() and mean_step > 0 and np.allclose(step, mean_step, rtol=1e-3)):
            raise ValueError("`hist` bin centres must be finite, increasing and equally spaced.")
    occupied = np.flatnonzero(counts)
    if occupied.size == 0:
        raise VolbinDataError(f"{method}: the histogram is empty; there is nothing to threshold.")
    if occupied.size == 1:
        raise VolbinDataError(
            f"{method}: every value falls in one histogram bin (constant data, near "
            f"{centers[occupied[0]]:g}); no threshold separates two classes."
        )
    return counts, centers


def _split_candidates(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Cumulative counts, the bins t with both classes (<= t, > t) non-empty, and the total."""
    cum = np.cumsum(counts)
    total = float(cum[-1])
    t = np.flatnonzero((cum > 0) & (cum < total))
    return cum, t, total


def _first_best(values: np.ndarray, maximize: bool) -> int:
    """Index of the first value within rounding (1e-12 relative) of the optimum.

    Sparse histograms often give exact ties (mirror-image splits); the lowest bin wins them
    whatever the rounding of the sums, as in ImageJ's and ITK's loops.
    """
    best = values.max() if maximize else values.min()
    tol = 1e-12 * max(1.0, abs(float(best)))
    near = values >= best - tol if maximize else values <= best + tol
    return int(np.argmax(near))


def _blocked_argmin(n_rows: int, n_cols: int, row_values: Callable[[slice], np.ndarray]) -> int:
    """First row index minimising `row_values`, computed in blocks of rows (bounded memory)."""
    step = max(1, _BLOCK // max(n_cols, 1))
    values = np.concatenate([row_values(slice(a, min(a + step, n_rows))) for a in range(0, n_rows, step)])
    return _first_best(values, maximize=False)


def threshold_huang(image: Any = None, nbins: int = 256, *, hist: Any = None) -> float:
    """Huang's fuzzy thresholding: the threshold that minimises the fuzziness of the split.

    Each voxel belongs to its class with membership ``1 / (1 + |x - m| / C)``, where ``m`` is
    the mean of its class and ``C`` the span of the occupied bins; the threshold minimises the
    sum of Shannon's entropy function of the memberships over all voxels.

    Parameters
    ----------
    image : ndarray, optional
        Values to threshold (finite ones are used), if `hist` is not given.
    nbins : int
        Bins of the histogram of `image` (ignored with `hist`).
    hist : array or (counts, centers), optional
        Histogram of counts, and optionally the bin centres (equally spaced; default
        ``0 .. n-1``), as for ``skimage.filters.threshold_otsu``.

    Returns
    -------
    threshold : float
        The centre of the last bin of the lower class; foreground is ``value > threshold``.

    Raises
    ------
    VolbinDataError
        An empty histogram, or one whose values all fall in one bin.
    ValueError
        Neither `image` nor `hist`, or a malformed `hist`.

    Notes
    -----
    In bin units, each class mean is rounded to the nearest bin before the memberships are
    taken, as in ImageJ's "Huang2" and ITK's ``HuangThresholdCalculator``.  ImageJ's
    "Huang" keeps the exact means; the criterion is flat near its minimum, so the two can
    differ by many bins (17 of 256 on ITK's example T1 head).  ITK rounds the means in intensity
    units, to integers, and leaves the first bin out of the lower class's mean, so it can
    differ from this by a bin.  Cost: time proportional to occupied bins squared, memory
    bounded by blocks.

    References
    ----------
    .. [1] L.-K. Huang and M.-J. J. Wang, "Image thresholding by minimizing the measures of
           fuzziness," Pattern Recognition, vol. 28, no. 1, pp. 41-51, 1995.
           doi:10.1016/0031-3203(94)E0043-K

    Examples
    --------
    >>> import numpy as np
    >>> from volbin.autothreshold import threshold_huang
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(20, 4, 5000), rng.normal(80, 8, 3000)])
    >>> t = threshold_huang(x)
    >>> bool(30 < t < 60)
    True
    """
    counts, centers = _histogram(image, nbins, hist, "huang")
    occ = np.flatnonzero(counts)
    first, last = int(occ[0]), int(occ[-1])
    h = counts[occ]
    distance = np.arange(last - first + 1)
    mu = 1.0 / (1.0 + distance / (last - first))
    fuzz = entr(mu) + entr(1.0 - mu)  # Shannon's function of the membership at each distance
    cum_n = np.cumsum(h)
    cum_s = np.cumsum(h * (occ - first))
    # Splits between consecutive occupied bins: the lower class is occ[:k + 1].  Class means
    # in bins from `first`, rounded half up (Java's Math.round).
    ks = np.arange(occ.size - 1)
    mean_lo = np.floor(cum_s[ks] / cum_n[ks] + 0.5).astype(np.int64)
    mean_hi = np.floor((cum_s[-1] - cum_s[ks]) / (cum_n[-1] - cum_n[ks]) + 0.5).astype(np.int64)
    pos = occ - first

    def fuzziness(rows: slice) -> np.ndarray:
        lower = np.arange(occ.size)[None, :] <= ks[rows, None]
        mean = np.where(lower, mean_lo[rows, None], mean_hi[rows, None])
        return (h[None, :] * fuzz[np.abs(pos[None, :] - mean)]).sum(axis=1)

    best = _blocked_argmin(ks.size, occ.size, fuzziness)
    # Bins between two occupied ones give the same split; the lowest is taken, as in ITK.
    return float(centers[occ[best]])


def _smooth3(y: np.ndarray) -> np.ndarray:
    """A 3-point running mean with zeros outside (ImageJ's and ITK's order of additions)."""
    left = np.concatenate([[0.0], y[:-1]])
    right = np.concatenate([y[1:], [0.0]])
    return (left + y + right) / 3.0


def _modes(y: np.ndarray) -> np.ndarray:
    """Indices of strict local maxima."""
    return np.flatnonzero((y[1:-1] > y[:-2]) & (y[1:-1] > y[2:])) + 1


def threshold_intermodes(image: Any = None, nbins: int = 256, *, hist: Any = None) -> float:
    """Prewitt & Mendelsohn's intermodes threshold: midway between the two histogram peaks.

    The histogram is smoothed by a 3-point running mean until it has exactly two local
    maxima ``j < k``; the threshold is the centre of bin ``(j + k) // 2``.

    Parameters
    ----------
    image : ndarray, optional
        Values to threshold (finite ones are used), if `hist` is not given.
    nbins : int
        Bins of the histogram of `image` (ignored with `hist`).
    hist : array or (counts, centers), optional
        Histogram of counts, and optionally the (equally spaced) bin centres.

    Returns
    -------
    threshold : float
        Foreground is ``value > threshold``.

    Raises
    ------
    VolbinDataError
        The histogram is not bimodal after `MAX_SMOOTHING` (10000) smoothings (a unimodal or
        flat histogram never is), is empty, or has all its values in one bin.
    ValueError
        Neither `image` nor `hist`, or a malformed `hist`.

    Notes
    -----
    As ImageJ's "Intermodes" and ITK's ``IntermodesThresholdCalculator`` (``UseInterMode``
    on): maxima are strict (``y[k-1] < y[k] > y[k+1]``), the smoothing treats bins outside
    the histogram as empty.  Histograms with very unequal peaks or a broad flat valley suit
    it poorly.

    References
    ----------
    .. [1] J. M. S. Prewitt and M. L. Mendelsohn, "The analysis of cell images," Annals of
           the New York Academy of Sciences, vol. 128, pp. 1035-1053, 1966.
           doi:10.1111/j.1749-6632.1965.tb11715.x

    Examples
    --------
    >>> import numpy as np
    >>> from volbin.autothreshold import threshold_intermodes
    >>> counts = np.array([0, 2, 9, 4, 1, 1, 3, 8, 3, 0])
    >>> threshold_intermodes(hist=counts)
    4.0
    """
    counts, centers = _histogram(image, nbins, hist, "intermodes")
    y = counts
    for _ in range(MAX_SMOOTHING + 1):
        modes = _modes(y)
        if modes.size == 2:
            return float(centers[(modes[0] + modes[1]) // 2])
        y = _smooth3(y)
    raise VolbinDataError(
        f"intermodes: the histogram is not bimodal after {MAX_SMOOTHING} smoothings "
        f"(it has {_modes(y).size} peak(s)); use a method that does not assume two peaks."
    )


def threshold_kittler_illingworth(image: Any = None, nbins: int = 256, *, hist: Any = None) -> float:
    """Kittler & Illingworth's minimum error threshold (ImageJ's "MinError(I)").

    The histogram is modelled as a mixture of two Gaussians; starting from the mean, the
    threshold is moved to the point where the two fitted, weighted densities cross (the root
    of a quadratic), until it no longer changes.

    Parameters
    ----------
    image : ndarray, optional
        Values to threshold (finite ones are used), if `hist` is not given.
    nbins : int
        Bins of the histogram of `image` (ignored with `hist`).
    hist : array or (counts, centers), optional
        Histogram of counts, and optionally the (equally spaced) bin centres.

    Returns
    -------
    threshold : float
        The centre of the last bin of the lower class; foreground is ``value > threshold``.

    Raises
    ------
    VolbinDataError
        A class with no spread (``sigma2 <= 0`` or ``tau2 <= 0``: all its values in one bin),
        an empty class, an iteration that leaves the histogram or cycles between bins, an
        empty histogram or one with all values in one bin.
    ValueError
        Neither `image` nor `hist`, or a malformed `hist`.

    Notes
    -----
    Follows ImageJ's and ITK's iteration: the first threshold is the bin holding the mean;
    each step takes the bin holding the larger root (ITK's bin lookup, where ImageJ takes the
    floor of the root in bin units); the log term of the quadratic is base 10, as in both
    (the paper's criterion has natural logarithms).  Fallback: when the quadratic has no
    real root the current threshold is returned, as ImageJ and ITK do.  Where ITK fails
    (``sigma2 <= 0`` and the like) this raises.

    References
    ----------
    .. [1] J. Kittler and J. Illingworth, "Minimum error thresholding," Pattern Recognition,
           vol. 19, no. 1, pp. 41-47, 1986. doi:10.1016/0031-3203(86)90030-0
    .. [2] C. A. Glasbey, "An analysis of histogram-based thresholding algorithms," CVGIP:
           Graphical Models and Image Processing, vol. 55, pp. 532-537, 1993.

    Examples
    --------
    >>> import numpy as np
    >>> from volbin.autothreshold import threshold_kittler_illingworth
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(20, 4, 5000), rng.normal(80, 8, 3000)])
    >>> t = threshold_kittler_illingworth(x)
    >>> bool(30 < t < 60)
    True
    """
    counts, centers = _histogram(image, nbins, hist, "kittler-illingworth")
    nb = counts.size
    first = int(np.flatnonzero(counts)[0])
    # Bin units, counted from the first occupied bin, keep the sums small and exact.
    i = np.arange(nb, dtype=np.float64) - first
    a = np.cumsum(counts)
    b = np.cumsum(counts * i)
    c = np.cumsum(counts * i * i)
    n, sb, sc = a[-1], b[-1], c[-1]
    t = min(max(int(np.floor(sb / n + 0.5)) + first, 0), nb - 1)
    seen = {t}
    while True:
        at = a[t]
        if at <= 0 or n - at <= 0:
            which = "lower" if at <= 0 else "upper"
            raise VolbinDataError(
                f"kittler-illingworth: the {which} class is empty at bin {t} ({centers[t]:g})."
            )
        mu = b[t] / at
        nu = (sb - b[t]) / (n - at)
        p = at / n
        q = (n - at) / n
        sigma2 = c[t] / at - mu * mu
        tau2 = (sc - c[t]) / (n - at) - nu * nu
        # A one-bin class has exactly zero variance in these units; allow for rounding.
        if sigma2 <= 1e-12 * max(1.0, c[t] / at) or tau2 <= 1e-12 * max(1.0, (sc - c[t]) / (n - at)):
            which = "sigma2" if sigma2 <= 1e-12 * max(1.0, c[t] / at) else "tau2"
            raise VolbinDataError(
                f"kittler-illingworth: {which} <= 0 at bin {t} ({centers[t]:g}): a class has all its "
                "values in one bin, so no Gaussian fits it."
            )
        w0 = 1.0 / sigma2 - 1.0 / tau2
        w1 = mu / sigma2 - nu / tau2
        w2 = mu * mu / sigma2 - nu * nu / tau2 + np.log10(sigma2 * q * q / (tau2 * p * p))
        sqterm = w1 * w1 - w0 * w2
        if sqterm < 0:
            return float(centers[t])  # no real root: keep the current threshold
        x = (w1 + np.sqrt(sqterm)) / w0 if w0 != 0 else w2 / (2.0 * w1)
        if not np.isfinite(x) or not -0.5 <= x + first < nb - 0.5:
            raise VolbinDataError(
                f"kittler-illingworth: the iteration left the histogram at bin {t} ({centers[t]:g})."
            )
        new = int(np.floor(x + 0.5)) + first
        if new == t:
            return float(centers[t])
        if new in seen:
            raise VolbinDataError(
                f"kittler-illingworth: the iteration cycles through bin {new} ({centers[new]:g}) "
                "without converging."
            )
        seen.add(new)
        t = new


def _entropies(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds, their lower-class fractions P1 and the class-probability vectors.

    Returns ``(t, p, P1, P2)``: bins with both classes non-empty, the normalised histogram,
    and the fraction at or below / above each bin.
    """
    cum, t, total = _split_candidates(counts)
    p = counts / total
    p1 = cum / total
    p2 = (total - cum) / total
    return t, p, p1, p2


def _kapur(p: np.ndarray, p1: np.ndarray, p2: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Kapur's total Shannon entropy of the two classes at each threshold `t`."""
    # -sum (p/P) ln(p/P) = ln P + (1/P) sum -p ln p, so prefix sums give every t at once.
    e = np.cumsum(entr(p))
    back = np.log(p1[t]) + e[t] / p1[t]
    obj = np.log(p2[t]) + (e[-1] - e[t]) / p2[t]
    return back + obj


def _renyi(p: np.ndarray, p1: np.ndarray, p2: np.ndarray, t: np.ndarray, alpha: float) -> np.ndarray:
    """Total Rényi entropy of order `alpha` (not 1) of the two classes at each threshold."""
    s = np.cumsum(p**alpha)
    back = s[t] / p1[t] ** alpha
    obj = (s[-1] - s[t]) / p2[t] ** alpha
    return np.log(back * obj) / (1.0 - alpha)


def threshold_max_entropy(image: Any = None, nbins: int = 256, *, hist: Any = None) -> float:
    """Kapur, Sahoo & Wong's maximum entropy threshold.

    The threshold maximises the sum of the Shannon entropies of the two classes' normalised
    histograms.

    Parameters
    ----------
    image : ndarray, optional
        Values to threshold (finite ones are used), if `hist` is not given.
    nbins : int
        Bins of the histogram of `image` (ignored with `hist`).
    hist : array or (counts, centers), optional
        Histogram of counts, and optionally the (equally spaced) bin centres.

    Returns
    -------
    threshold : float
        The centre of the last bin of the lower class; foreground is ``value > threshold``.

    Raises
    ------
    VolbinDataError
        An empty histogram, or one whose values all fall in one bin.
    ValueError
        Neither `image` nor `hist`, or a malformed `hist`.

    Notes
    -----
    As ImageJ's "MaxEntropy": the first maximum (ties, common in sparse histograms, go to
    the lowest bin).  ITK's calculator moves to a later bin only for a gain above 1e-5, so
    on near-ties it may keep an earlier bin.

    References
    ----------
    .. [1] J. N. Kapur, P. K. Sahoo and A. K. C. Wong, "A new method for gray-level picture
           thresholding using the entropy of the histogram," Computer Vision, Graphics, and
           Image Processing, vol. 29, no. 3, pp. 273-285, 1985.
           doi:10.1016/0734-189X(85)90125-2

    Examples
    --------
    >>> import numpy as np
    >>> from volbin.autothreshold import threshold_max_entropy
    >>> threshold_max_entropy(hist=np.array([4, 4, 4, 4, 1, 1, 1, 1]))
    3.0
    """
    counts, centers = _histogram(image, nbins, hist, "max-entropy")
    t, p, p1, p2 = _entropies(counts)
    return float(centers[t[_first_best(_kapur(p, p1, p2, t), maximize=True)]])


def threshold_renyi_entropy(image: Any = None, nbins: int = 256, *, hist: Any = None) -> float:
    """Sahoo et al.'s Rényi entropy threshold: a weighted mix of three maximum-entropy ones.

    The maximum-entropy thresholds for Rényi entropies of order 0.5, 1 (Kapur's) and 2 are
    sorted, ``t1 <= t2 <= t3``, and combined with weights that depend on how close they are
    (within 5 bins or not).

    Parameters
    ----------
    image : ndarray, optional
        Values to threshold (finite ones are used), if `hist` is not given.
    nbins : int
        Bins of the histogram of `image` (ignored with `hist`).
    hist : array or (counts, centers), optional
        Histogram of counts, and optionally the (equally spaced) bin centres.

    Returns
    -------
    threshold : float
        A bin centre; foreground is ``value > threshold``.

    Raises
    ------
    VolbinDataError
        An empty histogram, or one whose values all fall in one bin.
    ValueError
        Neither `image` nor `hist`, or a malformed `hist`.

    Notes
    -----
    As ImageJ's "RenyiEntropy" and ITK's calculator:
    ``t = t1 (P(t1) + w b1 / 4) + t2 w b2 / 4 + t3 (1 - P(t3) + w b3 / 4)`` with
    ``w = P(t3) - P(t1)``, ``P`` the cumulative fraction, and ``(b1, b2, b3)`` ``(1, 2, 1)``,
    ``(0, 1, 3)`` or ``(3, 1, 0)``; the bin index is truncated.  When ``t1 = t2 = t3 = t``
    this gives ``t``, where rounding of ``t (P + (1 - P))`` makes ITK give ``t - 1`` at
    times.  Ties among maxima go to the lowest bin.  The 5-bin closeness test is in bins,
    so the result depends a little on the bin count.

    References
    ----------
    .. [1] P. K. Sahoo, C. Wilkins and J. Yeager, "Threshold selection using Renyi's
           entropy," Pattern Recognition, vol. 30, no. 1, pp. 71-84, 1997.
           doi:10.1016/S0031-3203(96)00065-9
    .. [2] J. N. Kapur, P. K. Sahoo and A. K. C. Wong, "A new method for gray-level picture
           thresholding using the entropy of the histogram," Computer Vision, Graphics, and
           Image Processing, vol. 29, no. 3, pp. 273-285, 1985.

    Examples
    --------
    >>> import numpy as np
    >>> from volbin.autothreshold import threshold_renyi_entropy
    >>> threshold_renyi_entropy(hist=np.array([4, 4, 4, 4, 1, 1, 1, 1]))
    3.0
    """
    counts, centers = _histogram(image, nbins, hist, "renyi-entropy")
    t, p, p1, p2 = _entropies(counts)
    found = [
        int(t[_first_best(_renyi(p, p1, p2, t, 0.5), maximize=True)]),
        int(t[_first_best(_kapur(p, p1, p2, t), maximize=True)]),
        int(t[_first_best(_renyi(p, p1, p2, t, 2.0), maximize=True)]),
    ]
    t1, t2, t3 = sorted(found)
    near12, near23 = t2 - t1 <= 5, t3 - t2 <= 5
    if near12 == near23:
        beta = (1.0, 2.0, 1.0)
    else:
        beta = (0.0, 1.0, 3.0) if near12 else (3.0, 1.0, 0.0)
    omega = p1[t3] - p1[t1]
    opt = (
        t1 * (p1[t1] + 0.25 * omega * beta[0])
        + 0.25 * t2 * omega * beta[1]
        + t3 * (p2[t3] + 0.25 * omega * beta[2])
    )
    # Truncated as in ImageJ and ITK; the allowance keeps t1 = t2 = t3 = t at t despite rounding.
    return float(centers[min(int(opt + 1e-9), counts.size - 1)])


def threshold_moments(image: Any = None, nbins: int = 256, *, hist: Any = None) -> float:
    """Tsai's moment-preserving threshold.

    The threshold splits the histogram so that a two-valued image with the same first three
    moments has the same fraction ``p0`` of voxels at its lower value.  With the skewness
    ``g`` of the histogram, ``p0 = (1 + g / sqrt(g**2 + 4)) / 2``; the threshold is the first
    bin at which the cumulative fraction reaches ``p0``.

    Parameters
    ----------
    image : ndarray, optional
        Values to threshold (finite ones are used), if `hist` is not given.
    nbins : int
        Bins of the histogram of `image` (ignored with `hist`).
    hist : array or (counts, centers), optional
        Histogram of counts, and optionally the (equally spaced) bin centres.

    Returns
    -------
    threshold : float
        A bin centre; foreground is ``value > threshold``.

    Raises
    ------
    VolbinDataError
        An empty histogram, or one whose values all fall in one bin.
    ValueError
        Neither `image` nor `hist`, or a malformed `hist`.

    Notes
    -----
    ImageJ and ITK solve Tsai's equations with raw moments; the closed form in the
    standardised moments above is the same solution and does not lose precision to large
    intensities.  Where ``p0`` equals a cumulative fraction exactly (two equal masses, say)
    the threshold is the bin that reaches it, between the masses; ImageJ and ITK take the
    first bin that exceeds it, which rounding makes either.

    References
    ----------
    .. [1] W.-H. Tsai, "Moment-preserving thresholding: a new approach," Computer Vision,
           Graphics, and Image Processing, vol. 29, no. 3, pp. 377-393, 1985.
           doi:10.1016/0734-189X(85)90133-1

    Examples
    --------
    >>> import numpy as np
    >>> from volbin.autothreshold import threshold_moments
    >>> threshold_moments(hist=np.array([5, 5, 0, 0, 0, 0, 0, 0, 5, 5]))
    1.0
    """
    counts, centers = _histogram(image, nbins, hist, "moments")
    i = np.arange(counts.size, dtype=np.float64)
    total = counts.sum()
    mean = (counts * i).sum() / total
    d = i - mean
    var = (counts * d * d).sum() / total
    skew = (counts * d**3).sum() / total / var**1.5
    p0 = 0.5 * (1.0 + skew / np.sqrt(skew * skew + 4.0))
    # The first bin whose cumulative count reaches the p0-tile (ImageJ and ITK: exceeds it;
    # the same but for an exact tie, where "reaches" splits two equal masses between them).
    cum = np.cumsum(counts)
    t = int(np.searchsorted(cum, p0 * total * (1.0 - 1e-12), side="left"))
    return float(centers[min(t, counts.size - 1)])


def threshold_shanbhag(image: Any = None, nbins: int = 256, *, hist: Any = None) -> float:
    """Shanbhag's information-measure threshold.

    Voxels belong to their class with a membership that grows with their distance, in
    cumulative probability, from the threshold; the threshold makes the information
    measures of the two classes equal (minimises the absolute difference).

    Parameters
    ----------
    image : ndarray, optional
        Values to threshold (finite ones are used), if `hist` is not given.
    nbins : int
        Bins of the histogram of `image` (ignored with `hist`).
    hist : array or (counts, centers), optional
        Histogram of counts, and optionally the (equally spaced) bin centres.

    Returns
    -------
    threshold : float
        The centre of the last bin of the lower class; foreground is ``value > threshold``.

    Raises
    ------
    VolbinDataError
        An empty histogram, or one whose values all fall in one bin.
    ValueError
        Neither `image` nor `hist`, or a malformed `hist`.

    Notes
    -----
    As ImageJ's "Shanbhag" and ITK's calculator: for threshold ``t`` with lower fraction
    ``P1`` and upper fraction ``P2``, the lower measure is
    ``-(1 / 2P1) sum_{i<=t} p_i ln(1 - P(i-1) / 2P1)`` and the upper one
    ``-(1 / 2P2) sum_{i>t} p_i ln(1 - (1 - P(i)) / 2P2)``.  Cost: time proportional to
    occupied bins squared, memory bounded by blocks.

    References
    ----------
    .. [1] A. G. Shanbhag, "Utilization of information measure as a means of image
           thresholding," CVGIP: Graphical Models and Image Processing, vol. 56, no. 5,
           pp. 414-419, 1994. doi:10.1006/cgip.1994.1037

    Examples
    --------
    >>> import numpy as np
    >>> from volbin.autothreshold import threshold_shanbhag
    >>> threshold_shanbhag(hist=np.array([1, 3, 6, 3, 1, 0, 1, 3, 6, 3, 1]))
    4.0
    """
    counts, centers = _histogram(image, nbins, hist, "shanbhag")
    t, p, p1, p2 = _entropies(counts)
    occ = np.flatnonzero(counts)
    po = p[occ]
    below = np.concatenate([[0.0], p1[:-1]])[occ]  # fraction strictly below each occupied bin
    above = p2[occ]  # fraction strictly above it

    def measure_gap(rows: slice) -> np.ndarray:
        tt = t[rows, None]
        lower = occ[None, :] <= tt
        h1 = 0.5 / p1[t[rows]][:, None]
        h2 = 0.5 / p2[t[rows]][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            back = np.where(lower, po * np.log(1.0 - h1 * below), 0.0).sum(axis=1)
            obj = np.where(lower, 0.0, po * np.log(1.0 - h2 * above)).sum(axis=1)
        return np.abs(h1[:, 0] * back - h2[:, 0] * obj)

    best = _blocked_argmin(t.size, occ.size, measure_gap)
    return float(centers[t[best]])
