"""A static HTML index of a run over many files: one row per subject, with its preview.

`write_index_html` writes one self-contained ``index.html`` (inline CSS, no script, nothing
fetched from the network) whose links and images are relative, so the folder can be moved,
archived or served as it is.  `volbin.batch` writes one beside its outputs; the page says in a
``generator`` meta tag that volbin wrote it (`is_volbin_index`), so a batch never replaces an
``index.html`` of someone else's.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import OutputFileError

__all__ = ["is_volbin_index", "write_index_html"]

#: Keys a row may have (see `write_index_html`).
ROW_KEYS = (
    "name",
    "status",
    "input",
    "output",
    "preview",
    "thresholds",
    "thresholds_rescaled",
    "foreground_voxels",
    "foreground_mm3",
    "error",
    "note",
)
#: Thresholds listed in full; longer lists (per-slice decisions) show the first ones and a range.
SHOWN_THRESHOLDS = 4
#: Cells carry their exact values (``data-value``, JSON) when they hold at most this many.
EXACT_VALUES = 256
#: The ``<meta name="generator">`` of a page volbin wrote starts with this.
GENERATOR = "volbin"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 0.3em 0; }
p.summary { margin: 0 0 1em 0; color: #555; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 0.4em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.group { text-align: center; border-bottom: 1px solid #ccc; }
th.num { text-align: right; }
td.name { white-space: nowrap; }
td.preview img { max-width: 480px; height: auto; display: block; }
td.preview div.error { color: #a00; font-family: monospace; font-size: 0.9em; white-space: pre-wrap;
                       max-width: 40em; margin-top: 0.3em; }
td.preview div.note { color: #555; font-size: 0.9em; max-width: 40em; margin-top: 0.3em; }
p.about { margin: 0 0 0.3em 0; color: #333; }
.status { font-weight: 600; padding: 0.1em 0.5em; border-radius: 0.3em; }
.done { background: #dff3df; color: #1a6b1a; }
.skipped { background: #e6eef8; color: #2a4f7a; }
.failed { background: #f8e0e0; color: #a00; }
.pending { background: #f3ecd9; color: #7a5a00; }
.none { color: #999; }
"""


def _href(target: str | os.PathLike[str], folder: Path) -> str:
    rel = os.path.relpath(os.path.abspath(target), folder)
    return quote(Path(rel).as_posix())


def _number(value: Any, key: str, i: int) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`rows[{i}]['{key}']` must be a number or None; got {value!r}.") from None
    return v


def _values(value: Any, key: str, i: int) -> list[float | None]:
    items = [value] if value is None or isinstance(value, (int, float)) else list(value)
    try:
        return [None if v is None else float(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(
            f"`rows[{i}]['{key}']` must be a number, a sequence of numbers, a mapping of names to "
            f"those, or None; got {value!r}."
        ) from None


def _list_text(nums: list[float | None]) -> str:
    shown = ["-" if v is None else f"{v:.6g}" for v in nums[:SHOWN_THRESHOLDS]]
    text = ", ".join(shown)
    if len(nums) > SHOWN_THRESHOLDS:
        finite = [v for v in nums if v is not None and math.isfinite(v)]
        span = f"; {min(finite):.6g} to {max(finite):.6g}" if finite else ""
        text += f", ... ({len(nums)} in all{span})"
    return text


def _exact(value: Any, count: int) -> str:
    """` data-value="..."` with `value` as JSON (exact floats), if it holds few values."""
    if count > EXACT_VALUES:
        return ""

    def clean(v: Any) -> Any:  # JSON has no NaN or infinity
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return f' data-value="{html.escape(json.dumps(clean(value), allow_nan=False), quote=True)}"'


def _thresholds(value: Any, key: str, i: int) -> str:
    """A table cell of thresholds: a number, one per group, or named ones (``low``, ``high``)."""
    none = '<td class="num"><span class="none">-</span></td>'
    if value is None:
        return none
    if isinstance(value, Mapping):
        parts, exact, count = [], {}, 0
        for name, v in value.items():
            nums = _values(v, key, i)
            if not nums or all(n is None for n in nums):
                continue
            count += len(nums)
            exact[str(name)] = nums if not isinstance(v, (int, float)) else nums[0]
            parts.append(f"{name} {_list_text(nums)}")
        if not parts:
            return none
        return f'<td class="num"{_exact(exact, count)}>{html.escape("; ".join(parts))}</td>'
    nums = _values(value, key, i)
    if not nums or all(n is None for n in nums):
        return none
    exact_value: Any = nums[0] if isinstance(value, (int, float)) else nums
    return f'<td class="num"{_exact(exact_value, len(nums))}>{html.escape(_list_text(nums))}</td>'


def _count_cell(value: Any, key: str, i: int, fmt: str) -> str:
    v = _number(value, key, i)
    if v is None:
        return '<td class="num"><span class="none">-</span></td>'
    exact = int(v) if fmt == "int" else v
    text = f"{int(v):,}" if fmt == "int" else f"{v:,.1f}"
    return f'<td class="num"{_exact(exact, 1)}>{text}</td>'


def _check_rows(rows: Any) -> list[Mapping[str, Any]]:
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise TypeError(f"`rows` must be a list of dicts; got {type(rows).__name__}.")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"`rows[{i}]` must be a dict; got {type(row).__name__}.")
        unknown = sorted(set(row) - set(ROW_KEYS))
        if unknown:
            raise ValueError(f"`rows[{i}]` has unknown keys {unknown}; expected some of {list(ROW_KEYS)}.")
        if not isinstance(row.get("name"), str) or not row["name"]:
            raise ValueError(f"`rows[{i}]['name']` must be a non-empty str; got {row.get('name')!r}.")
        out.append(row)
    return out


def write_index_html(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str = "volbin results",
    description: str | None = None,
) -> Path:
    """Write a static ``index.html`` with one row per subject.

    Parameters
    ----------
    rows : list of dict
        One dict per subject, in the order shown.  Keys (all but ``name`` optional):

        - ``name`` (str): what the row is called, e.g. the input file's name.
        - ``status`` (str): ``done``, ``skipped``, ``failed``, ``pending`` or any other word.
        - ``input``, ``output`` (path): linked, relative to the index's folder.
        - ``preview`` (path): a PNG shown in the row (e.g. written by `volbin.preview`), linked
          to itself; a path that does not exist is reported as missing, not linked.
        - ``thresholds``, ``thresholds_rescaled``: the thresholds used, in raw units and
          rescaled: a number, a sequence of numbers (one per group: the first
          `SHOWN_THRESHOLDS` are shown, then their count and range), a mapping of names to
          those (``{"low": 210.5, "high": 330.2}``), or None.
        - ``foreground_voxels`` (int or None), ``foreground_mm3`` (number or None): the
          foreground's size in voxels and in cubic millimetres.
        - ``error`` (str or None): why the file failed; ``note`` (str or None): anything else
          to say about it.  Both are shown in the preview's column, under the picture or in
          its place.
    path : str or path-like
        The HTML file to write (atomically; an existing one is replaced).
    title : str
        Heading and page title.
    description : str, optional
        A line shown under the heading (what was done to every file).

    Returns
    -------
    Path
        `path`.

    Raises
    ------
    TypeError, ValueError
        `rows` is not a list of dicts of the keys above, or a value has the wrong type.
    OutputFileError
        The folder of `path` does not exist or the file cannot be written.

    Notes
    -----
    Numeric cells carry their exact values as JSON in a ``data-value`` attribute (when they
    hold at most `EXACT_VALUES`), so that a script can read the page without parsing the
    rounded text.  The page names volbin as its ``generator`` (`is_volbin_index`).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> rows = [
    ...     {"name": "sub-01", "status": "done", "thresholds": [412.5], "foreground_mm3": 1.2e6},
    ...     {"name": "sub-02", "status": "failed", "error": "sub-02.nii.gz: truncated file"},
    ... ]
    >>> page = write_index_html(rows, folder / "index.html").read_text()
    >>> "sub-02.nii.gz: truncated file" in page and "http" not in page
    True
    >>> is_volbin_index(folder / "index.html")
    True
    """
    from . import __version__
    from .io import write_atomic

    checked = _check_rows(rows)
    path = Path(path)
    folder = path.parent.resolve() if path.parent.exists() else path.parent.absolute()
    counts = Counter(str(r.get("status") or "unknown") for r in checked)
    summary = ", ".join(f"{n} {html.escape(s)}" for s, n in counts.items()) or "no files"
    body = []
    for i, row in enumerate(checked):
        status = str(row.get("status") or "")
        css = status if status in ("done", "skipped", "failed", "pending") else "none"
        name = html.escape(row["name"])
        links = []
        for key in ("input", "output"):
            if row.get(key):
                links.append(f'<a href="{_href(row[key], folder)}">{key}</a>')
        # Long paths break after their slashes only (not at the hyphens of BIDS names).
        cell_name = name.replace("/", "/<wbr>") + (f"<br><small>{' | '.join(links)}</small>" if links else "")
        pv = row.get("preview")
        if pv and os.path.isfile(pv):
            href = _href(pv, folder)
            cell_preview = f'<a href="{href}"><img src="{href}" alt="preview of {name}" loading="lazy"></a>'
        elif pv:
            cell_preview = '<span class="none">preview missing</span>'
        else:
            cell_preview = '<span class="none">-</span>' if row.get("error") is None else ""
        # The error and notes go under the picture, or in its place: the widest column.
        error, note = row.get("error"), row.get("note")
        if error is not None:
            cell_preview += f'<div class="error">{html.escape(str(error))}</div>'
        if note is not None:
            cell_preview += f'<div class="note">{html.escape(str(note))}</div>'
        body.append(
            "<tr>"
            f'<td class="name">{cell_name}</td>'
            f'<td><span class="status {css}">{html.escape(status) or "-"}</span></td>'
            f'<td class="preview">{cell_preview}</td>'
            + _thresholds(row.get("thresholds"), "thresholds", i)
            + _thresholds(row.get("thresholds_rescaled"), "thresholds_rescaled", i)
            + _count_cell(row.get("foreground_voxels"), "foreground_voxels", i, "int")
            + _count_cell(row.get("foreground_mm3"), "foreground_mm3", i, "float")
            + "</tr>"
        )
    about = f'<p class="about">{html.escape(description)}</p>\n' if description else ""
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="generator" content="{GENERATOR} {html.escape(__version__, quote=True)}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{about}"
        f'<p class="summary">{len(checked)} files: {summary}</p>\n'
        "<table>\n<thead>\n"
        '<tr><th rowspan="2">subject</th><th rowspan="2">status</th><th rowspan="2">preview</th>'
        '<th colspan="2" class="group">thresholds</th><th colspan="2" class="group">foreground</th></tr>\n'
        '<tr><th class="num">raw</th><th class="num">rescaled</th><th class="num">voxels</th>'
        '<th class="num">mm&sup3;</th></tr>\n</thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table>\n</body>\n</html>\n"
    )
    if not path.parent.is_dir():
        raise OutputFileError(f"{path.parent}: output folder does not exist; create it first.")
    try:
        return write_atomic(path, page.encode("utf-8"))
    except OSError as exc:
        raise OutputFileError(f"{path}: cannot write ({exc.strerror or exc}).") from exc


_GENERATOR_TAG = re.compile(rb'<meta\s+name="generator"\s+content="volbin[\s"]', re.IGNORECASE)


def is_volbin_index(path: str | os.PathLike[str]) -> bool:
    """Whether the HTML file at `path` was written by `write_index_html` (False if unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return _GENERATOR_TAG.search(head) is not None
