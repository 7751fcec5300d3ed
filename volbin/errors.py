"""Error types of volbin, each with an actionable message.

Exception tree::

    Exception
    ├── VolbinError                  base of every error volbin raises on purpose
    │   ├── VolbinFileError          a file cannot be read or written (also an OSError)
    │   │   ├── InputFileError       missing, unreadable, corrupt or truncated input
    │   │   └── OutputFileError      output exists, folder missing, disk full, same as input
    │   └── VolbinDataError          the data cannot be processed (also a ValueError):
    │                                wrong dimensionality or dtype, all-NaN volume, ...
    └── ValueError / TypeError       ordinary misuse of a parameter (bad option names/values)

Warnings::

    UserWarning
    └── VolbinWarning               non-finite voxels excluded, constant volumes, ...
"""

from __future__ import annotations

__all__ = [
    "InputFileError",
    "OutputFileError",
    "VolbinDataError",
    "VolbinError",
    "VolbinFileError",
    "VolbinWarning",
]


class VolbinError(Exception):
    """Base class of the errors volbin raises on purpose."""


class VolbinFileError(VolbinError, OSError):
    """A file cannot be read or written."""


class InputFileError(VolbinFileError):
    """An input file is missing, unreadable, of an unknown format, corrupt or truncated."""


class OutputFileError(VolbinFileError):
    """An output cannot be written: it exists, its folder is missing, the disk is full, ..."""


class VolbinDataError(VolbinError, ValueError):
    """The data cannot be processed: wrong dimensionality or dtype, no finite voxel, ..."""


class VolbinWarning(UserWarning):
    """Something about the data that the user should know: non-finite voxels, constant volumes."""
