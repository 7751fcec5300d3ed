"""volbin: binary volumes from 3D/4D medical images, correct, fast, at any size, reproducible.

>>> import volbin
>>> ph = volbin.phantom((32, 36, 32), seed=0)
>>> mask = volbin.binarize(ph.intensity, method="otsu", scope="volume")
>>> mask.shape, mask.dtype
((32, 36, 32), dtype('bool'))
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .batch import batch
from .binarize import binarize
from .convert import convert
from .dither import dither
from .errors import (
    InputFileError,
    OutputFileError,
    VolbinDataError,
    VolbinError,
    VolbinFileError,
    VolbinWarning,
)
from .io import load, read_sidecar, save
from .phantom import Phantom, phantom
from .printer import export_slices
from .quality import dither_error
from .recipe import Recipe
from .report import describe, dice
from .resample import resample_to_grid, upsample
from .rescale import rescale
from .threshold import threshold
from .volume import Grouping, Volume

try:
    __version__ = _version("volbin")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Grouping",
    "InputFileError",
    "OutputFileError",
    "Phantom",
    "Recipe",
    "VolbinDataError",
    "VolbinError",
    "VolbinFileError",
    "VolbinWarning",
    "Volume",
    "__version__",
    "batch",
    "binarize",
    "convert",
    "describe",
    "dice",
    "dither",
    "dither_error",
    "export_slices",
    "load",
    "phantom",
    "read_sidecar",
    "resample_to_grid",
    "rescale",
    "save",
    "threshold",
    "upsample",
]
