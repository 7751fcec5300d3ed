"""volbin: binary volumes from 3D/4D medical images, correct, fast, at any size, reproducible.

>>> import volbin
>>> ph = volbin.phantom((32, 36, 32), seed=0)
>>> mask = volbin.binarize(ph.intensity, method="otsu", scope="volume")
>>> mask.shape, mask.dtype
((32, 36, 32), dtype('bool'))

The public names below are imported on first use, so that ``import volbin`` (and the
command line's ``--help``) does not pay for dask, scipy and scikit-image until they are
needed.
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

from .errors import (
    InputFileError,
    OutputFileError,
    VolbinDataError,
    VolbinError,
    VolbinFileError,
    VolbinWarning,
)

try:
    __version__ = _version("volbin")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

#: Public name -> the module that defines it.
_LAZY = {
    "survey": "volbin.survey",
    "compare_masks": "volbin.overlap",
    "binary_summary": "volbin.overlap",
    "classify": "volbin.classify",
    "Classification": "volbin.classify",
    "clean": "volbin.clean",
    "CleanResult": "volbin.clean",
    "normalize": "volbin.batch.normalizing",
    "fit_normalize": "volbin.normalize",
    "fit_nyul": "volbin.normalize",
    "NyulLandmarks": "volbin.normalize",
    "Normalization": "volbin.normalize",
    "exposure_stats": "volbin.exposure",
    "threshold_local": "volbin.local",
    "binarize_local": "volbin.local",
    "apply_hysteresis_threshold": "volbin.local",
    "Grouping": "volbin.volume",
    "Phantom": "volbin.phantom",
    "Recipe": "volbin.recipe",
    "Volume": "volbin.volume",
    "batch": "volbin.batch",
    "binarize": "volbin.binarize",
    "convert": "volbin.io",
    "describe": "volbin.report",
    "dice": "volbin.report",
    "dither": "volbin.dither",
    "dither_error": "volbin.dither.quality",
    "export_slices": "volbin.printer",
    "load": "volbin.io",
    "phantom": "volbin.phantom",
    "preview": "volbin.preview",
    "read_sidecar": "volbin.io",
    "resample_to_grid": "volbin.resample",
    "rescale": "volbin.rescale",
    "save": "volbin.io",
    "threshold": "volbin.threshold",
    "upsample": "volbin.resample",
    "write_index_html": "volbin.report_html",
}

if TYPE_CHECKING:
    from .batch import batch
    from .batch.normalizing import normalize
    from .binarize import binarize
    from .classify import Classification, classify
    from .clean import CleanResult, clean
    from .dither import dither
    from .dither.quality import dither_error
    from .exposure import exposure_stats
    from .io import convert, load, read_sidecar, save
    from .local import apply_hysteresis_threshold, binarize_local, threshold_local
    from .normalize import Normalization, NyulLandmarks, fit_normalize, fit_nyul
    from .overlap import binary_summary, compare_masks
    from .phantom import Phantom, phantom
    from .preview import preview
    from .printer import export_slices
    from .recipe import Recipe
    from .report import describe, dice
    from .report_html import write_index_html
    from .resample import resample_to_grid, upsample
    from .rescale import rescale
    from .survey import survey
    from .threshold import threshold
    from .volume import Grouping, Volume


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'volbin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """volbin's module type: a submodule never hides the public function of the same name.

    Importing ``volbin.batch`` (the package) binds it as ``volbin.batch`` on the parent;
    the function `volbin.batch` must stay what that name means.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "Classification",
    "CleanResult",
    "Grouping",
    "InputFileError",
    "Normalization",
    "NyulLandmarks",
    "OutputFileError",
    "Phantom",
    "Recipe",
    "VolbinDataError",
    "VolbinError",
    "VolbinFileError",
    "VolbinWarning",
    "Volume",
    "__version__",
    "apply_hysteresis_threshold",
    "batch",
    "binarize",
    "binarize_local",
    "binary_summary",
    "classify",
    "clean",
    "compare_masks",
    "convert",
    "describe",
    "dice",
    "dither",
    "dither_error",
    "export_slices",
    "exposure_stats",
    "fit_normalize",
    "fit_nyul",
    "load",
    "normalize",
    "phantom",
    "preview",
    "read_sidecar",
    "resample_to_grid",
    "rescale",
    "save",
    "survey",
    "threshold",
    "threshold_local",
    "upsample",
    "write_index_html",
]
