"""Shared fixtures: small phantoms, real MRI files shipped by packages, a NIfTI writer.

Real MRI comes from nibabel's own test data (always installed with nibabel) and, when dipy is
installed, from the small NIfTI files in its wheel (``dipy/data/files``); fixtures for the
latter skip when dipy is absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import settings

from volbin.phantom import Phantom, phantom

# CI explores the same examples on every run (a failure is then reproducible); locally,
# hypothesis keeps searching new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"

#: Real MRI shipped by nibabel: a 3D T1 crop and a 4D EPI series.
NIBABEL_FILES = {
    "anatomical.nii": "3D T1-weighted, (33, 41, 25) big-endian int16, 2 mm",
    "example4d.nii.gz": "4D EPI, (128, 96, 24, 2) int16, 2 x 2 x 2.2 mm, TR 2 s",
    "functional.nii": "4D EPI, (17, 21, 3, 20) int16, 4 x 4 x 8 mm",
}

#: Real MRI shipped in dipy's wheel (``dipy/data/files``).
DIPY_FILES = {
    "S0_10slices.nii.gz": "b0 diffusion volume, (128, 128, 10, 1) uint16, 2 mm in-plane",
    "aniso_vox.nii.gz": "b0 diffusion volume, (58, 58, 24) int16, 4 x 4 x 5 mm",
}


def _frozen(p: Phantom) -> Phantom:
    # Session-scoped arrays are shared by every test: make accidental writes fail loudly.
    for array in (p.intensity, p.labels, p.affine):
        array.flags.writeable = False
    return p


@pytest.fixture(scope="session")
def phantom3d() -> Phantom:
    """A small 3D T1-weighted phantom, (48, 56, 48) float32, read-only."""
    return _frozen(phantom((48, 56, 48), seed=0))


@pytest.fixture(scope="session")
def phantom4d() -> Phantom:
    """A small 4D phantom of 4 volumes, (40, 48, 40, 4) float32, read-only."""
    return _frozen(phantom((40, 48, 40), n_volumes=4, seed=1))


def _nibabel_file(name: str) -> Path:
    path = NIBABEL_DATA / name
    if not path.is_file():
        pytest.skip(f"nibabel's test data file {name} is not installed")
    return path


def _dipy_file(name: str) -> Path:
    dipy = pytest.importorskip("dipy", reason="dipy (optional) ships real MRI test files")
    path = Path(str(resources.files(dipy) / "data" / "files" / name))
    if not path.is_file():
        pytest.skip(f"dipy {dipy.__version__} does not ship data/files/{name}")
    return path


@pytest.fixture(scope="session")
def real_t1_path() -> Path:
    """nibabel's ``anatomical.nii``: a real 3D T1-weighted crop, (33, 41, 25) >i2."""
    return _nibabel_file("anatomical.nii")


@pytest.fixture(scope="session")
def real_4d_path() -> Path:
    """nibabel's ``example4d.nii.gz``: a real 4D EPI series, (128, 96, 24, 2) int16."""
    return _nibabel_file("example4d.nii.gz")


@pytest.fixture(scope="session")
def dipy_b0_path() -> Path:
    """dipy's ``S0_10slices.nii.gz``: a real b0 brain volume, (128, 128, 10, 1) uint16."""
    return _dipy_file("S0_10slices.nii.gz")


@pytest.fixture(scope="session")
def dipy_aniso_path() -> Path:
    """dipy's ``aniso_vox.nii.gz``: a real brain volume, (58, 58, 24) int16, 4 x 4 x 5 mm."""
    return _dipy_file("aniso_vox.nii.gz")


@pytest.fixture(
    scope="session",
    params=[*(f"nibabel:{n}" for n in NIBABEL_FILES), *(f"dipy:{n}" for n in DIPY_FILES)],
)
def real_mri_path(request: pytest.FixtureRequest) -> Path:
    """Each real MRI file in turn; the dipy ones skip when dipy is not installed."""
    package, name = request.param.split(":")
    return _nibabel_file(name) if package == "nibabel" else _dipy_file(name)


@pytest.fixture
def nifti_factory(tmp_path: Path) -> Callable[..., Path]:
    """Write an array to a NIfTI-1 file in `tmp_path` and return its path.

    ``make(data, name="volume.nii.gz", *, affine=None, dtype=None, slope=None, inter=None)``:
    `affine` defaults to the identity; `dtype` is the on-disk dtype (default: the array's).
    When `slope` or `inter` is given, `data` holds the values stored on disk (cast to `dtype`)
    and the header gets exactly that ``scl_slope`` / ``scl_inter``, so a reader must return
    ``data * slope + inter``.  A name ending in ``.nii.gz`` is compressed.
    """

    def make(
        data: np.ndarray,
        name: str = "volume.nii.gz",
        *,
        affine: np.ndarray | None = None,
        dtype: np.typing.DTypeLike = None,
        slope: float | None = None,
        inter: float | None = None,
    ) -> Path:
        data = np.asarray(data)
        dtype = data.dtype if dtype is None else np.dtype(dtype)
        scaled = slope is not None or inter is not None
        if scaled:
            data = data.astype(dtype)
        img = nib.Nifti1Image(data, np.eye(4) if affine is None else np.asarray(affine))
        img.header.set_data_dtype(dtype)
        img.header.set_xyzt_units("mm", "sec")
        if scaled:
            img.header.set_slope_inter(1.0 if slope is None else slope, inter or 0.0)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img.to_filename(path)
        return path

    return make


#: A real T1 head (128x128x62 int16, 2 x 2 x 3 mm) and its brain mask, from Debian's
#: insighttoolkit5-examples.
ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")


@pytest.fixture(scope="session")
def itk_t1() -> tuple[np.ndarray, np.ndarray]:
    """ITK's ``KmeansTest_T1UCharRaw.nii.gz`` (int16) and its skull-strip mask (bool)."""
    t1, brain = ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz", ITK_DATA / "KmeansTest_T1RawSkullStrip.nii.gz"
    if not (t1.is_file() and brain.is_file()):
        pytest.skip("insighttoolkit5-examples (the ITK T1 head) is not installed")
    x = np.asanyarray(nib.load(t1).dataobj)
    m = np.asanyarray(nib.load(brain).dataobj) > 0
    for a in (x, m):
        a.flags.writeable = False
    return x, m


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep volbin's on-disk cache (blue-noise patterns) out of the user's cache folder."""
    old = os.environ.get("VOLBIN_CACHE_DIR")
    os.environ["VOLBIN_CACHE_DIR"] = str(tmp_path_factory.mktemp("volbin-cache"))
    yield
    if old is None:
        os.environ.pop("VOLBIN_CACHE_DIR", None)
    else:
        os.environ["VOLBIN_CACHE_DIR"] = old


@pytest.fixture(params=[0, 2, 3])
def tone_level(request: pytest.FixtureRequest) -> Iterator[int]:
    """Each vector version (scalar, AVX2, AVX-512) of the loop of `volbin.kernels._tone`
    that finds the voxels fine histograms do not settle; skipped where the machine lacks it."""
    from volbin.kernels import _tone

    if _tone._set_simd_level(request.param) != request.param:
        _tone._set_simd_level(99)
        pytest.skip(f"vector level {request.param} is not available on this machine")
    yield request.param
    _tone._set_simd_level(99)


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private VOLBIN_TMPDIR, to see the temporary copies .nii.gz loading makes."""
    folder = tmp_path / "volbin-tmp"
    folder.mkdir()
    monkeypatch.setenv("VOLBIN_TMPDIR", str(folder))
    return folder
