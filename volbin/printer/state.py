"""The export folder: manifest, lock, resume state and the files an export leaves there.

`export_slices` (volbin.printer) records its settings and a hash of the input in
``manifest.json``, keeps a log of layer densities and the 3D checkpoints in
``.volbin-export/``, and writes every file to a temporary name before renaming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np

if TYPE_CHECKING:
    from . import PrintGrid

MANIFEST = "manifest.json"
STATE_DIR = ".volbin-export"
FORMAT = "volbin-slices/1"
_LAYER_FILE = re.compile(r"^layer_\d+\.png$")


# --- files -------------------------------------------------------------------------------------
def _png_density(path: Path) -> float:
    from PIL import Image

    with Image.open(path) as img:
        a = np.asarray(img)
    return float(np.count_nonzero(a)) / max(a.size, 1)


def _write_json(obj: Any, path: Path) -> None:
    from ..io import write_json

    write_json(obj, path, indent=1)


def _lock(state: Path) -> contextlib.AbstractContextManager[None]:
    from ..io import folder_lock

    return folder_lock(
        state / "lock",
        f"{state.parent}: another volbin export is writing to this folder; wait for it to finish "
        "or choose another folder.",
    )


def _clear(out: Path) -> None:
    """Remove what an export wrote in `out` (and nothing else)."""
    for e in list(os.scandir(out)):
        p = Path(e.path)
        if e.name == STATE_DIR:  # all but the lock, which this run holds
            for s in os.scandir(p):
                if s.name != "lock":
                    shutil.rmtree(s.path, ignore_errors=True) if s.is_dir() else os.unlink(s.path)
        elif e.name == MANIFEST:
            p.unlink()
        elif e.is_dir() and e.name.startswith("label_"):
            shutil.rmtree(p, ignore_errors=True)
        elif _LAYER_FILE.match(e.name) or _is_temp(e.name, "layer_"):
            p.unlink()


def _is_temp(name: str, prefix: str = "") -> bool:
    """Whether `name` is a temporary of volbin's atomic writes (of a name starting `prefix`)."""
    from ..io import TEMP_NAME

    m = TEMP_NAME.match(name)
    return m is not None and m["base"].startswith(prefix)


def _clean_temps(folders: Sequence[Path]) -> None:
    for folder in folders:
        if folder.is_dir():
            for e in os.scandir(folder):
                if _is_temp(e.name):
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)


def _sha256(data: da.Array) -> str:
    """Hash of the values in Fortran order, whatever the chunking."""
    h = hashlib.sha256(f"{data.dtype.str}{tuple(data.shape)}".encode())
    bounds = np.cumsum((0, *data.chunks[-1]))
    for lo, hi in itertools.pairwise(bounds):
        block = np.asarray(data[..., int(lo) : int(hi)].compute())
        h.update(block.tobytes(order="F"))
    return h.hexdigest()


# --- the manifest ------------------------------------------------------------------------------
def _version() -> str:
    from ..io import _version as v

    return v()


def _jsonable(obj: Any) -> Any:
    from ..io import to_jsonable

    return to_jsonable(obj)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not old:
        return "no manifest"
    return "differs in " + ", ".join(keys)


def _read_log(path: Path) -> dict[int, dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                records[int(r["layer"])] = r
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a stopped run
    return records


def _summary(
    grid: PrintGrid,
    settings: dict[str, Any],
    folders: list[Path],
    names: list[str],
    values: list[int],
    records: dict[int, dict[str, Any]],
    done: list[bool],
) -> dict[str, Any]:
    rows = []
    for k, name in enumerate(names):
        if not done[k]:
            continue
        r = records.get(k)
        if values:
            files = {str(v): f"{f.name}/{name}" for v, f in zip(values, folders, strict=True)}
            if r is None:
                r = {
                    "density": {str(v): _png_density(f / name) for v, f in zip(values, folders, strict=True)},
                    "fraction": None,
                }
            rows.append({"index": k, "files": files, "density": r["density"], "fraction": r.get("fraction")})
        else:
            if r is None:
                r = {"density": _png_density(folders[0] / name), "grey": None}
            rows.append({"index": k, "file": name, "density": r["density"], "grey": r.get("grey")})
    out: dict[str, Any] = {
        "layer_count": grid.shape[2],
        "written": len(rows),
        "width": grid.shape[0],
        "height": grid.shape[1],
        "dpi": settings["dpi"],
        "pitch_mm": list(grid.pitch),
        "layers": rows,
    }
    if values:
        out["label_folders"] = {str(v): f.name for v, f in zip(values, folders, strict=True)}
    return out
