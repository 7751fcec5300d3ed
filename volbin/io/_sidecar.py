"""JSON sidecars: where an image's sidecar lives, JSON-able values, reading and updating."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFileError
from ._atomic import write_atomic
from ._common import _create, _kind


# --- sidecars --------------------------------------------------------------------------------
def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar of an image: where volbin records how the image was made.

    NIfTI images follow BIDS: the extension is replaced by ``.json`` (``mask.nii.gz`` and
    ``mask.nii`` -> ``mask.json``).  Other formats keep their extension and add ``.json``
    (``mask.npy`` -> ``mask.npy.json``, ``mask.zarr`` -> ``mask.zarr.json``), so that two
    outputs of one name in different formats never share a sidecar.  A NIfTI and a
    ``.nii.gz`` of one name do share one: `volbin.io.save` refuses to write an image whose
    sidecar describes another image that still exists.

    Examples
    --------
    >>> sidecar_path("out/mask.nii.gz").as_posix()
    'out/mask.json'
    >>> sidecar_path("x.zarr").name, sidecar_path("mask.npy").name
    ('x.zarr.json', 'mask.npy.json')
    """
    path = Path(path)
    kind = _kind(path)
    if kind is None:
        return path.with_suffix(".json")
    if kind in ("npy", "zarr"):
        return path.with_name(path.name + ".json")
    return path.with_name(path.name[: -len(kind) - 1] + ".json")


def to_jsonable(obj: Any) -> Any:
    """`obj` made of plain JSON types: numpy scalars and arrays as lists, non-finite floats as
    None, paths as strings, dataclasses as dicts.

    Examples
    --------
    >>> to_jsonable({"t": np.float32(0.5), "v": np.array([1, 2]), "bad": float("nan")})
    {'t': 0.5, 'v': [1, 2], 'bad': None}
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, (np.ndarray, np.generic)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.dtype):
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    raise TypeError(f"cannot write a {type(obj).__name__} to a JSON sidecar: {obj!r}")


def _write_json(record: Mapping[str, Any], path: Path) -> None:
    """Write `record` to the new file `path` (a temporary name; the caller renames it)."""
    text = json.dumps(to_jsonable(record), indent=2, allow_nan=False) + "\n"
    fd = _create(path)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json(record: Mapping[str, Any], path: str | os.PathLike[str], *, indent: int = 2) -> Path:
    """Write `record` as JSON to `path` atomically (numpy values converted, no NaN)."""
    text = json.dumps(to_jsonable(record), indent=indent, allow_nan=False) + "\n"
    return write_atomic(path, text)


def last_recipe(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The recipe of the last step of a sidecar `record` that has one, or None."""
    steps = record.get("steps")
    if not isinstance(steps, list):
        return None
    recipes = [s["recipe"] for s in steps if isinstance(s, dict) and isinstance(s.get("recipe"), dict)]
    return recipes[-1] if recipes else None


def update_sidecar(path: str | os.PathLike[str], **fields: Any) -> Path:
    """Add or replace top-level `fields` in an output's sidecar, atomically.

    Parameters
    ----------
    path : str or path-like
        The sidecar, or the image it describes.
    **fields
        JSON-able values (numpy scalars and arrays are converted).

    Returns
    -------
    Path
        The sidecar's path.
    """
    side = Path(path) if str(path).endswith(".json") else sidecar_path(path)
    record = read_sidecar(side)
    record.update(fields)
    return write_json(record, side)


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the JSON sidecar of an output (given the sidecar or the image path).

    Parameters
    ----------
    path : str or path-like
        The ``.json`` sidecar, or the image it describes.

    Returns
    -------
    record : dict
        The sidecar's contents.

    Raises
    ------
    InputFileError
        The sidecar is missing or not a JSON object.

    Examples
    --------
    >>> import os, tempfile
    >>> from volbin.io import save
    >>> tmp = tempfile.TemporaryDirectory()
    >>> p = save(np.zeros((2, 2, 2), np.uint8), os.path.join(tmp.name, "z.npy"), sidecar={"seed": 1})
    >>> read_sidecar(p)["seed"]
    1
    >>> tmp.cleanup()
    """
    p = Path(path)
    if p.suffix.lower() != ".json":
        p = sidecar_path(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(f"{p}: no such file") from None
    except OSError as exc:
        raise InputFileError(f"{p}: cannot read ({exc.strerror or exc}).") from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{p}: not a valid JSON sidecar ({exc}).") from None
    if not isinstance(record, dict):
        raise InputFileError(f"{p}: not a valid JSON sidecar (expected an object).")
    return record
