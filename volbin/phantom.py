"""An MRI-like T1-weighted head phantom with ground-truth labels, for demos and tests.

`phantom` draws nested, smoothly deformed ellipsoidal tissues (scalp, skull, CSF, a folded
grey-matter ribbon, white matter, deep grey nuclei, ventricles) on a voxel grid, blurs the
class means for partial-volume edges, multiplies by a smooth bias field and adds Rician noise.
Everything is vectorised numpy/scipy and deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import nibabel as nib
    from numpy.typing import DTypeLike

__all__ = ["CLASSES", "CLASS_MEANS", "Phantom", "phantom"]

#: Label of each tissue class in `Phantom.labels`.
CLASSES: Mapping[str, int] = MappingProxyType(
    {
        "background": 0,
        "csf": 1,
        "grey_matter": 2,
        "white_matter": 3,
        "scalp": 4,
        "skull": 5,
    }
)

#: Noise-free T1-weighted intensity of each class, as a fraction of ``max_intensity``.
#: Scalp is mostly subcutaneous fat (bright on T1); skull is dark cortical bone averaged with
#: some fatty diploic marrow; background is a faint floor (ghosting, ambient signal).
CLASS_MEANS: Mapping[str, float] = MappingProxyType(
    {
        "background": 0.02,
        "csf": 0.25,
        "grey_matter": 0.60,
        "white_matter": 0.85,
        "scalp": 0.90,
        "skull": 0.30,
    }
)

# Sigma, in voxels, of the Gaussian that makes partial-volume edges.
_PV_SIGMA = 0.7
# Relative spread of the global intensity scale between the volumes of a 4D phantom, and the
# weight of each volume's own bias perturbation relative to the shared field.
_SCALE_JITTER = 0.02
_BIAS_JITTER = 0.25
# Shape of the head in grid units (semi-axes, and a shift down along Z): the head surface is
# at rho == 1 in head-normalised coordinates.
_HEAD_AXES = (0.84, 0.88, 0.86)
_HEAD_SHIFT_Z = -0.02
# The smooth warp moves a point by at most this much, in grid units.
_MAX_WARP = 0.03
# Head-normalised radii of the layers and the angular frequency of the cortical folds.
_SKULL_OUTER = 0.935
_SKULL_INNER = 0.885
_PIAL = 0.86
_WHITE = 0.66
_SULCUS_DEPTH = 0.14
_GYRUS_HEIGHT = 0.10
_FOLD_FREQ = 12.0


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic T1-weighted head and its ground truth.

    Attributes
    ----------
    intensity : (X, Y, Z) or (X, Y, Z, T) ndarray
        The image, of the dtype asked for.
    labels : (X, Y, Z) ndarray of uint8
        Tissue class of each voxel; see `classes`.  Shared by every volume of a 4D phantom.
    affine : (4, 4) ndarray of float64
        Voxel to RAS+ world (mm) transform: the voxel sizes on the diagonal and the world
        origin at the centre of the grid.
    classes : read-only mapping of str to int
        Label of each class: background 0, csf 1, grey_matter 2, white_matter 3, scalp 4,
        skull 5.
    """

    intensity: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    classes: Mapping[str, int]

    @property
    def foreground(self) -> np.ndarray:
        """(X, Y, Z) bool ndarray: the head, every non-background voxel.

        This is the ground truth of a head-versus-air threshold.  Otsu's threshold of the
        default phantom lies above the noisy background and below grey matter; as on real T1
        scans, CSF and skull are darker than it, so the Otsu mask is this head with dark holes
        inside, and filling them (``scipy.ndimage.binary_fill_holes``) recovers it.
        """
        return self.labels > 0

    @property
    def brain(self) -> np.ndarray:
        """(X, Y, Z) bool ndarray: intracranial tissue (CSF, grey and white matter)."""
        c = self.classes
        return np.isin(self.labels, (c["csf"], c["grey_matter"], c["white_matter"]))

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel sizes in mm along X, Y and Z."""
        x, y, z = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return x, y, z

    def to_nifti(self) -> nib.Nifti1Image:
        """The intensity as a NIfTI-1 image with `affine` as sform and qform, units mm.

        Examples
        --------
        >>> img = phantom((16, 20, 16), n_volumes=2).to_nifti()
        >>> img.shape, img.header.get_xyzt_units()
        ((16, 20, 16, 2), ('mm', 'sec'))
        """
        import nibabel as nib

        img = nib.Nifti1Image(self.intensity, self.affine)
        img.header.set_xyzt_units("mm", "sec")
        img.set_sform(self.affine, code="scanner")
        img.set_qform(self.affine, code="scanner")
        return img


def phantom(
    shape: Sequence[int] = (96, 112, 96),
    *,
    n_volumes: int | None = None,
    seed: int = 0,
    noise: float = 0.03,
    bias: float = 0.2,
    max_intensity: float = 1000.0,
    dtype: DTypeLike = "float32",
    zooms: Sequence[float] = (1.0, 1.0, 1.0),
    means: Mapping[str, float] | None = None,
) -> Phantom:
    """Make a T1-weighted MRI-like head phantom with ground-truth tissue labels.

    Parameters
    ----------
    shape : 3 ints, optional
        Grid size (X, Y, Z).  The head fills the grid whatever its size, with a margin of air.
    n_volumes : int, optional
        If given, return an (X, Y, Z, T) stack of this many volumes of the same anatomy, like
        repeated acquisitions: each has independent noise, a global intensity scale within a
        few percent of 1 and a slightly perturbed bias field.  The first volume is the 3D
        phantom of the same seed.
    seed : int, optional
        Seed of every random choice: the anatomy's deformations, the bias field and the noise.
        The same arguments give the same bytes.
    noise : float, optional
        Standard deviation of the complex Gaussian noise, as a fraction of `max_intensity`.
        The image is its magnitude, so noise is Rician (Rayleigh in the background).
    bias : float, optional
        Amplitude of the smooth multiplicative bias field, in [0, 1): over the grid the field
        stays within ``1 - bias`` and ``1 + bias`` and reaches one of them.
    max_intensity : float, optional
        Full-scale intensity: class means are fractions of it (see `CLASS_MEANS`).  Bias and
        noise can take a few voxels above it.
    dtype : dtype, optional
        Float or integer dtype of the intensity.  Integer results are rounded and clipped to
        the dtype's range.
    zooms : 3 floats, optional
        Voxel sizes in mm, written into the affine.  They do not change the anatomy, which is
        drawn in grid units.
    means : mapping of str to float, optional
        Class means to use instead of those in `CLASS_MEANS`, as fractions of
        `max_intensity`, e.g. ``{"csf": 0.5}``.  Classes not named keep their default.

    Returns
    -------
    Phantom
        The intensity, labels, affine and class names.

    Raises
    ------
    ValueError
        If a parameter is out of range, e.g. a non-positive size in `shape`, ``n_volumes < 1``,
        a negative `noise`, a `bias` outside [0, 1) or an unknown class name in `means`.
    TypeError
        If `dtype` is neither a float nor an integer dtype.

    Notes
    -----
    Class means (fractions of `max_intensity`) follow T1 contrast: white matter 0.85 > grey
    matter 0.60 > CSF 0.25 > background 0.02, with bright scalp fat (0.90) and darker skull
    (0.30).  The noise-free image is the class-mean image blurred by a Gaussian of sigma
    0.7 voxel (partial-volume edges), times a random quadratic bias field.  Rician noise is
    the magnitude of the signal plus complex Gaussian noise of standard deviation
    ``noise * max_intensity``.

    The anatomy is a head ellipsoid holding scalp, skull and a CSF layer around the brain;
    the cortex is a grey-matter ribbon whose pial and white-matter surfaces are modulated by
    a random pattern on the sphere, with CSF-filled sulci; a midline fissure splits the
    hemispheres; deep grey nuclei and curved lateral ventricles sit in the white matter.  A
    smooth random warp of the coordinates deforms all of it.

    Examples
    --------
    >>> p = phantom((48, 56, 48), seed=1)
    >>> p.intensity.shape, p.intensity.dtype, p.labels.dtype
    ((48, 56, 48), dtype('float32'), dtype('uint8'))
    >>> sorted(p.classes, key=p.classes.get)
    ['background', 'csf', 'grey_matter', 'white_matter', 'scalp', 'skull']
    >>> means = {name: p.intensity[p.labels == k].mean() for name, k in p.classes.items()}
    >>> bool(means["white_matter"] > means["grey_matter"] > means["csf"] > means["background"])
    True
    >>> p.affine[:3, 3].tolist()
    [-23.5, -27.5, -23.5]
    >>> phantom((32, 32, 32), n_volumes=3, dtype="int16").intensity.shape
    (32, 32, 32, 3)
    """
    shape = _check_shape(shape)
    zooms = _check_zooms(zooms)
    if n_volumes is not None and (not _is_int(n_volumes) or n_volumes < 1):
        raise ValueError(f"`n_volumes` must be None or a positive int; got {n_volumes!r}.")
    if not noise >= 0:
        raise ValueError(f"`noise` must be non-negative; got {noise!r}.")
    if not 0 <= bias < 1:
        raise ValueError(f"`bias` must be in [0, 1); got {bias!r}.")
    if not (max_intensity > 0 and np.isfinite(max_intensity)):
        raise ValueError(f"`max_intensity` must be positive and finite; got {max_intensity!r}.")
    out_dtype = np.dtype(dtype)
    if out_dtype.kind not in "fiu":
        raise TypeError(f"`dtype` must be a float or integer dtype; got {out_dtype}.")

    anatomy_ss, bias_ss, noise_ss = np.random.SeedSequence(seed).spawn(3)
    grid = _grid(shape)
    labels = _labels(grid, np.random.default_rng(anatomy_ss))

    lut = np.zeros(max(CLASSES.values()) + 1, dtype=np.float32)
    for name, fraction in {**CLASS_MEANS, **_check_means(means)}.items():
        lut[CLASSES[name]] = fraction
    clean = ndimage.gaussian_filter(lut[labels] * np.float32(max_intensity), _PV_SIGMA)

    bias_rng = np.random.default_rng(bias_ss)
    base = _random_quadratic(grid, bias_rng)
    n = 1 if n_volumes is None else int(n_volumes)
    intensity = np.empty((*shape, n), dtype=out_dtype)
    for t, vol_ss in enumerate(noise_ss.spawn(n)):
        field, scale = base, 1.0
        if t > 0:
            field = base + _BIAS_JITTER * _random_quadratic(grid, bias_rng)
            scale = 1.0 + _SCALE_JITTER * float(bias_rng.standard_normal())
        signal = clean * _bias_field(field, bias, scale)
        noisy = _rician(signal, noise * max_intensity, np.random.default_rng(vol_ss))
        intensity[..., t] = _cast(noisy, out_dtype)
    if n_volumes is None:
        intensity = intensity[..., 0]

    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -np.asarray(zooms) * (np.asarray(shape) - 1) / 2
    return Phantom(intensity=intensity, labels=labels, affine=affine, classes=CLASSES)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        ok = len(shape) == 3 and all(_is_int(s) and s >= 2 for s in shape)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"`shape` must be 3 ints, each at least 2; got {shape!r}.")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _check_means(means: Mapping[str, float] | None) -> dict[str, float]:
    if means is None:
        return {}
    unknown = sorted(set(means) - set(CLASSES))
    if unknown:
        raise ValueError(f"`means` has unknown class names {unknown}; expected some of {list(CLASSES)}.")
    bad = {k: v for k, v in means.items() if not (np.isfinite(v) and v >= 0)}
    if bad:
        raise ValueError(f"`means` must be non-negative finite fractions; got {bad}.")
    return {k: float(v) for k, v in means.items()}


def _check_zooms(zooms: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(z) for z in zooms)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(z) and z > 0 for z in values):
        raise ValueError(f"`zooms` must be 3 positive finite floats; got {zooms!r}.")
    return values


def _grid(shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Open (broadcastable) float32 coordinates in [-1, 1] along each axis."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    return list(np.ix_(*axes))


def _sphere_pattern(n: Sequence[np.ndarray], rng: np.random.Generator, freq: float, terms: int) -> np.ndarray:
    """A smooth random function of the unit direction `n`, scaled to about [-1, 1]."""
    out = np.zeros(np.broadcast_shapes(*(c.shape for c in n)), dtype=np.float32)
    for _ in range(terms):
        w = rng.standard_normal(3)
        w = (w * (freq / np.linalg.norm(w))).astype(np.float32)
        phase = np.float32(rng.uniform(0, 2 * np.pi))
        out += np.cos(w[0] * n[0] + w[1] * n[1] + w[2] * n[2] + phase)
    return out / np.float32(np.sqrt(terms / 2) * 1.5)


def _box(grid: list[np.ndarray], lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, ...]:
    """Index box holding every voxel whose head-normalised coordinates lie in [lo, hi]."""
    box = []
    for g, a, low, high, shift in zip(grid, _HEAD_AXES, lo, hi, (0, 0, _HEAD_SHIFT_Z), strict=True):
        g = g.ravel()
        inside = np.flatnonzero((g >= low * a + shift - _MAX_WARP) & (g <= high * a + shift + _MAX_WARP))
        box.append(slice(inside[0], inside[-1] + 1) if inside.size else slice(0, 0))
    return tuple(box)


def _in_ellipsoid(x, y, z, centre, axes) -> np.ndarray:
    return (
        ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2
    ) < 1


def _labels(grid: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    c = CLASSES
    gx, gy, gz = grid
    # A smooth, low-frequency warp of the coordinates deforms every tissue consistently.
    warped = []
    for g in grid:
        amp = np.float32(rng.uniform(0.5, 1.0) * _MAX_WARP)
        f = rng.uniform(1.5, 3.0, size=3).astype(np.float32)
        phase = np.float32(rng.uniform(0, 2 * np.pi))
        warped.append(g + amp * np.sin(f[0] * gx + f[1] * gy + f[2] * gz + phase))
    x = warped[0] / np.float32(_HEAD_AXES[0])
    y = warped[1] / np.float32(_HEAD_AXES[1])
    z = (warped[2] - np.float32(_HEAD_SHIFT_Z)) / np.float32(_HEAD_AXES[2])
    rho = np.sqrt(x * x + y * y + z * z)

    # Layers from the scalp inwards, drawn only in the shell where the surfaces can lie.
    labels = np.zeros(rho.shape, dtype=np.uint8)
    labels[rho <= 0.5] = c["white_matter"]
    shell = np.flatnonzero((rho > 0.5) & (rho < 1.1))
    r = rho.ravel()[shell]
    direction = [a.ravel()[shell] / r for a in (x, y, z)]
    lumps = 0.015 * _sphere_pattern(direction, rng, freq=2.5, terms=4)
    folds = _sphere_pattern(direction, rng, freq=_FOLD_FREQ, terms=12)
    # Sulci follow the zero lines of a random field on the sphere, which meander and branch
    # like real ones: a narrow CSF cleft, lined by grey matter, under which the white matter
    # retreats; between sulci the white matter reaches up into the gyri.
    cleft = np.exp(-((folds / np.float32(0.3)) ** 2))
    bank = np.exp(-((folds / np.float32(0.9)) ** 2))
    r = r - lumps
    layer = np.zeros(r.shape, dtype=np.uint8)
    layer[r < 1] = c["scalp"]
    layer[r < _SKULL_OUTER] = c["skull"]
    layer[r < _SKULL_INNER] = c["csf"]
    layer[r < _PIAL - _SULCUS_DEPTH * cleft] = c["grey_matter"]
    layer[r < _WHITE + _GYRUS_HEIGHT * (1 - bank)] = c["white_matter"]
    np.put(labels, shell, layer)

    # Interhemispheric fissure: CSF on the midline above the corpus callosum, lined by a
    # medial cortex of varying thickness.
    fy, fz = rng.uniform(8, 12, size=2).astype(np.float32)
    py, pz = rng.uniform(0, 2 * np.pi, size=2).astype(np.float32)
    box = _box(grid, (-0.1, -1.1, -1.1), (0.1, 1.1, 1.1))
    xb, yb, zb = x[box], y[box], z[box]
    sub = labels[box]
    # The fissure stops at the corpus callosum, an arch just above the ventricles.
    dorsal = (zb + 0.45 * yb * yb > 0.30) & (rho[box] < _SKULL_INNER)
    mid = np.abs(xb + np.float32(0.01) * np.sin(np.float32(3) * yb))
    medial = 0.045 + 0.02 * np.cos(fy * yb + py) * np.cos(fz * zb + pz)
    sub[dorsal & (mid < medial) & (sub == c["white_matter"])] = c["grey_matter"]
    sub[dorsal & (mid < 0.018)] = c["csf"]

    # Deep grey nuclei (thalami, basal ganglia), then curved lateral ventricles.
    box = _box(grid, (-0.35, -0.45, -0.15), (0.35, 0.45, 0.3))
    xb, yb, zb = x[box], y[box], z[box]
    sub = labels[box]
    arched_z = zb - (0.12 - 0.45 * (yb - 0.02) ** 2)
    gm, csf = c["grey_matter"], c["csf"]
    for side in (-1, 1):
        sub[_in_ellipsoid(xb, yb, zb, (side * 0.14, -0.10, -0.02), (0.11, 0.15, 0.11))] = gm
        sub[_in_ellipsoid(xb, yb, zb, (side * 0.24, 0.12, -0.02), (0.07, 0.13, 0.10))] = gm
        sub[_in_ellipsoid(xb, yb, arched_z, (side * 0.1, 0.02, 0), (0.08, 0.38, 0.10))] = csf
    return labels


def _random_quadratic(grid: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A random quadratic polynomial of the coordinates, zero-mean and of max |value| 1."""
    gx, gy, gz = grid
    coef = rng.standard_normal(9).astype(np.float32)
    coef[3:] *= np.float32(0.5)  # bias fields are mostly gradients
    q = coef[0] * gx + coef[1] * gy + coef[2] * gz
    q = q + coef[3] * gx * gx + coef[4] * gy * gy + coef[5] * gz * gz
    q = q + coef[6] * gx * gy + coef[7] * gx * gz + coef[8] * gy * gz
    q -= q.mean(dtype=np.float64)
    return q / max(float(np.abs(q).max()), 1e-12)


def _bias_field(q: np.ndarray, bias: float, scale: float) -> np.ndarray:
    q = q / max(float(np.abs(q).max()), 1e-12)
    return np.float32(scale) * (1 + np.float32(bias) * q)


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma == 0:
        return signal
    sigma32 = np.float32(sigma)
    real = rng.standard_normal(signal.shape, dtype=np.float32)
    real *= sigma32
    real += signal
    imag = rng.standard_normal(signal.shape, dtype=np.float32)
    imag *= sigma32
    return np.hypot(real, imag, out=real)


def _cast(volume: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return volume.astype(dtype, copy=False)
    info = np.iinfo(dtype)
    return np.clip(np.rint(volume), info.min, info.max).astype(dtype)
