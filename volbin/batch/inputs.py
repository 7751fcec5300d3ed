"""Batch inputs and outputs: expanding globs, list files and folders; output names; resume.

Owns what `volbin.batch` decides before anything runs: which inputs, which output each gets,
whether an existing output is up to date (its sidecar against the recipe and the input), the
temporary files a killed run left, and the lock that keeps two batches out of one folder.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import VolbinError
from ..formats import IMAGE_EXTS, image_ext
from ..io import TEMP_NAME
from ..recipe import Recipe

REPORT_NAME = "volbin-batch-report.json"
#: The HTML index of a batch, in its output folder (`volbin.report_html`).
INDEX_NAME = "index.html"
#: Outputs up to this size are hashed on every resume check (SHA-256 against the sidecar);
#: larger ones only when asked (``verify=True``).  Their size is compared in any case.
VERIFY_BYTES = 64 * 2**20
LOCK_NAME = ".volbin-batch.lock"
_GLOB_CHARS = re.compile(r"[*?\[]")


# --- inputs and names --------------------------------------------------------------------------
_image_ext = image_ext


def _is_image(path: str) -> bool:
    return _image_ext(os.path.basename(path.rstrip("/" + os.sep))) is not None


def expand_inputs(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The input paths a batch runs over, in order and without duplicates.

    Parameters
    ----------
    inputs : str, path-like or sequence of them
        Each item is a glob (``data/sub-*/anat/*_T1w.nii.gz``; ``**`` recurses), a folder
        (every ``.nii``, ``.nii.gz``, ``.npy`` and ``.zarr`` directly inside it), an image
        path, or a list file (any other file: one path or glob per line, ``#`` starts a
        comment, relative paths are relative to the current folder).  A ``.zarr`` folder is an
        image, not a folder of inputs.

    Returns
    -------
    paths : list of str
        Globs and folders keep only image names; paths named explicitly are kept even if
        they do not exist or are not images, so that the batch reports them as failed.

    Raises
    ------
    ValueError
        No input at all, or a glob that matches no image.
    OSError
        A list file cannot be read.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: dict[str, str] = {}  # resolved path -> the path as first given
    for item in items:
        for p in _expand(os.fspath(item), list_file_ok=True):
            # One file named twice (relative and absolute, or through a link) runs once.
            out.setdefault(os.path.realpath(p), os.path.normpath(p))
    if not out:
        raise ValueError(f"`inputs` names no input file; got {inputs!r}.")
    return list(out.values())


def _expand(item: str, list_file_ok: bool) -> list[str]:
    item = os.path.expanduser(item.strip())
    if _GLOB_CHARS.search(item):
        found = sorted(p for p in glob.glob(item, recursive=True) if _is_image(p))
        if not found:
            raise ValueError(f"no image matches {item!r} (volbin reads {', '.join(IMAGE_EXTS)}).")
        return found
    if os.path.isdir(item) and not _is_image(item):
        return sorted(os.path.join(item, e.name) for e in os.scandir(item) if _is_image(e.name))
    if list_file_ok and os.path.isfile(item) and not _is_image(item):
        with open(item, encoding="utf-8") as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
        return [p for line in lines if line for p in _expand(line, list_file_ok=False)]
    return [item]


def output_path(
    input: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    suffix: str = "_mask",
    ext: str | None = None,
    subdir: str = "",
) -> Path:
    """The output of `input`: its name with `suffix` before the extension, in `out_dir`.

    Examples
    --------
    >>> output_path("data/sub-01/anat/sub-01_T1w.nii.gz", "masks").as_posix()
    'masks/sub-01_T1w_mask.nii.gz'
    >>> output_path("run.npy", "out", suffix="_bin", ext=".zarr").as_posix()
    'out/run_bin.zarr'
    """
    name = os.path.basename(os.fspath(input).rstrip("/" + os.sep))
    in_ext = _image_ext(name)
    if in_ext is None:
        raise ValueError(f"{input}: unknown file format; volbin reads {', '.join(IMAGE_EXTS)}.")
    out_ext = name[-len(in_ext) :] if ext is None else _check_ext(ext)
    return Path(out_dir, subdir, name[: -len(in_ext)] + suffix + out_ext)


def _check_ext(ext: str) -> str:
    e = ext if ext.startswith(".") else "." + ext
    if e.lower() not in IMAGE_EXTS:
        raise ValueError(f"`ext` must be one of {', '.join(IMAGE_EXTS)}; got {ext!r}.")
    return e.lower()


# --- resume: is an output up to date? -----------------------------------------------------------
def _recipe_doc(recipe: Recipe) -> dict[str, Any]:
    """The recipe as it reads back from a sidecar (JSON round trip)."""
    from ..io import to_jsonable

    return json.loads(json.dumps(to_jsonable(recipe.to_dict())))


def _output_state(
    input: str,
    output: str,
    recipe_doc: dict[str, Any],
    volume_axis: int | None,
    cohort: str | None = None,
    verify: bool = False,
) -> tuple[str, str | None]:
    """``("current" | "missing" | "stale" | "foreign" | "conflict", reason)`` for an output.

    With `cohort` (the identity of a cohort's inputs), an output is current only if its
    sidecar records the same cohort.

    ``foreign``: a file at the output's name (or its sidecar's) that volbin did not write,
    replaced only with ``force``; ``conflict``: the sidecar name belongs to another image
    that exists, never replaced.  An image whose sidecar is still marked pending (the writer
    was killed between renaming the image and completing its sidecar) is complete when it is
    the very file the pending sidecar names (device, inode and size); its sidecar is then
    completed here.  A sidecar matching the recipe and the input's identity makes the
    output current only when the image's size (and SHA-256, for images up to
    `VERIFY_BYTES` or with `verify`) matches the sidecar's record.
    """
    from ..io import input_identity, last_recipe, read_sidecar, sidecar_path, write_json

    side = sidecar_path(output)
    record: dict[str, Any] | None = None
    if os.path.lexists(side):
        try:
            record = read_sidecar(side)
        except VolbinError:
            record = {}
        if "volbin_version" not in record:
            return "foreign", f"{side} is not a volbin sidecar; pass --force (force=True) to replace it"
        described = (record.get("output") or {}).get("path")
        if isinstance(described, str) and os.path.abspath(described) != os.path.abspath(output):
            if os.path.lexists(described):
                return "conflict", (
                    f"{side} is the sidecar of {described}, another image in this folder; remove it "
                    "or choose another --suffix or --ext"
                )
            record = None  # the sidecar of an image that is gone
    if not os.path.lexists(output):
        return "missing", None
    if record is None:
        return "foreign", (
            f"{output} exists without its sidecar {side.name} (not written by volbin); pass "
            "--force (force=True) to replace it"
        )
    pending = record.get("pending")
    if pending is not None:
        if not _is_pending_image(output, pending):
            return "stale", "redone after an interrupted write"
        record = {k: v for k, v in record.items() if k != "pending"}
        write_json(record, side)
    if last_recipe(record) != recipe_doc:
        return "stale", "replaced an output made with another recipe"
    src = record.get("input") or {}
    try:
        size, mtime_ns = input_identity(input)
    except OSError:
        size, mtime_ns = -1, -1
    if (src.get("path"), src.get("size"), src.get("mtime_ns")) != (
        os.path.abspath(input),
        size,
        mtime_ns,
    ):
        return "stale", "replaced an output made from another version of the input"
    if (record.get("batch") or {}).get("volume_axis") != volume_axis:
        return "stale", "replaced an output made with another volume axis"
    if cohort is not None:
        decisions = [s.get("decision") for s in record.get("steps") or [] if isinstance(s, dict)]
        theirs = ((decisions[-1] or {}).get("cohort") or {}).get("id") if decisions else None
        if theirs != cohort:
            return "stale", "replaced an output of a cohort with other inputs"
    damage = _damage(output, record.get("output") or {}, verify)
    if damage:
        return "stale", f"replaced a damaged output ({damage})"
    return "current", None


def _named_preview(output: str) -> Path | None:
    """The preview PNG of `output` that its volbin sidecar names (whether or not it exists).

    Only the name `volbin.preview.preview_path` gives is accepted: a sidecar naming any other
    file does not make volbin replace, remove or link it.
    """
    from ..io import read_sidecar, sidecar_path
    from ..preview import preview_path

    side = sidecar_path(output)
    if not os.path.lexists(side):
        return None
    try:
        record = read_sidecar(side)
    except VolbinError:
        return None
    described = (record.get("output") or {}).get("path")
    if "volbin_version" not in record or (
        isinstance(described, str) and os.path.abspath(described) != os.path.abspath(output)
    ):
        return None
    png = preview_path(output)
    return png if record.get("preview") == png.name else None


def _has_preview(output: str) -> bool:
    """Whether `output`'s sidecar names its preview and the PNG is there."""
    png = _named_preview(output)
    return png is not None and png.is_file()


def _is_pending_image(output: str, pending: Any) -> bool:
    try:
        st = os.stat(output)
        return (
            isinstance(pending, dict)
            and (st.st_dev, st.st_ino) == (pending.get("device"), pending.get("inode"))
            and _size(output) == pending.get("size")
        )
    except OSError:
        return False


def _size(path: str) -> int:
    from ..io import input_identity

    return input_identity(path)[0]


def _damage(output: str, recorded: dict[str, Any], verify: bool) -> str | None:
    """Why `output` is not the file its sidecar describes (size, then SHA-256), or None."""
    import hashlib

    try:
        size = _size(output)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    want = recorded.get("size")
    if isinstance(want, int) and size != want:
        return f"{size} bytes, its sidecar records {want}; truncated?"
    digest = recorded.get("sha256")
    if (
        isinstance(digest, str)
        and os.path.isfile(output)
        and (verify or size <= VERIFY_BYTES or want is None)
    ):
        h = hashlib.sha256()
        try:
            with open(output, "rb") as f:
                while block := f.read(16 * 2**20):
                    h.update(block)
        except OSError as exc:
            return f"cannot read it: {exc.strerror or exc}"
        if h.hexdigest() != digest:
            return "its SHA-256 differs from the one its sidecar records"
    return None


def _clean_stray_temps(folders: set[str], suffix: str) -> list[str]:
    """Remove io.save's temporary files left in `folders` by a killed run.

    Only names made from a batch output (``*<suffix>.<ext>``), its sidecar, its preview
    (``*<suffix>.png``), the run report or the HTML index are touched.
    """
    removed = []
    bases = tuple(suffix + e for e in (*IMAGE_EXTS, ".json", ".npy.json", ".zarr.json", ".png"))
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            m = TEMP_NAME.match(e.name)
            if m and (m["base"].lower().endswith(bases) or m["base"] in (REPORT_NAME, INDEX_NAME)):
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
                removed.append(e.path)
    return removed


def _folder_lock(out_dir: str) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on `out_dir` so that two batches never write it at once."""
    from ..io import folder_lock

    return folder_lock(
        os.path.join(out_dir, LOCK_NAME),
        f"{out_dir}: another volbin batch is writing to this folder; wait for it to finish or "
        "choose another output folder.",
    )
