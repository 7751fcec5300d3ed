"""A static HTML index of a run over many files: one row per subject, with its preview.

`write_index_html` writes one self-contained ``index.html`` (inline CSS, no script, nothing
fetched from the network) whose links and images are relative, so the folder can be moved,
archived or served as it is.
"""

from __future__ import annotations

import html
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .preview import _write_atomic

__all__ = ["write_index_html"]

#: Keys a row may have (see `write_index_html`).
ROW_KEYS = ("name", "status", "input", "output", "preview", "thresholds", "foreground_mm3", "error")
#: Thresholds listed in full; longer lists (per-slice decisions) show the first ones and a range.
SHOWN_THRESHOLDS = 4

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 0.3em 0; }
p.summary { margin: 0 0 1em 0; color: #555; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 0.4em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.preview img { max-width: 480px; height: auto; display: block; }
td.error { color: #a00; font-family: monospace; white-space: pre-wrap; max-width: 40em; }
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


def _thresholds(value: Any, i: int) -> str:
    if value is None:
        return '<span class="none">-</span>'
    items = [value] if isinstance(value, (int, float)) else list(value)
    try:
        nums = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(
            f"`rows[{i}]['thresholds']` must be a number, a sequence of numbers or None; got {value!r}."
        ) from None
    if not nums:
        return '<span class="none">-</span>'
    text = ", ".join(f"{v:.6g}" for v in nums[:SHOWN_THRESHOLDS])
    if len(nums) > SHOWN_THRESHOLDS:
        finite = [v for v in nums if math.isfinite(v)]
        span = f"; {min(finite):.6g} to {max(finite):.6g}" if finite else ""
        text += f", ... ({len(nums)} in all{span})"
    return html.escape(text)


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
        - ``thresholds`` (number, sequence of numbers or None): the thresholds used.
        - ``foreground_mm3`` (number or None): foreground volume in cubic millimetres
          (foreground voxels times ``abs(det(affine[:3, :3]))``).
        - ``error`` (str or None): why the file failed.
    path : str or path-like
        The HTML file to write (atomically; an existing one is replaced).
    title : str
        Heading and page title.

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
    """
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
        cell_name = name + (f"<br><small>{' | '.join(links)}</small>" if links else "")
        pv = row.get("preview")
        if pv and os.path.isfile(pv):
            href = _href(pv, folder)
            cell_preview = f'<a href="{href}"><img src="{href}" alt="preview of {name}" loading="lazy"></a>'
        elif pv:
            cell_preview = '<span class="none">preview missing</span>'
        else:
            cell_preview = '<span class="none">-</span>'
        fg = _number(row.get("foreground_mm3"), "foreground_mm3", i)
        cell_fg = '<span class="none">-</span>' if fg is None else f"{fg:,.1f}"
        error = row.get("error")
        cell_error = "" if error is None else html.escape(str(error))
        body.append(
            "<tr>"
            f"<td>{cell_name}</td>"
            f'<td><span class="status {css}">{html.escape(status) or "-"}</span></td>'
            f'<td class="preview">{cell_preview}</td>'
            f'<td class="num">{_thresholds(row.get("thresholds"), i)}</td>'
            f'<td class="num">{cell_fg}</td>'
            f'<td class="error">{cell_error}</td>'
            "</tr>"
        )
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="summary">{len(checked)} files: {summary}</p>\n'
        "<table>\n<thead><tr><th>subject</th><th>status</th><th>preview</th><th>thresholds</th>"
        "<th>foreground (mm&sup3;)</th><th>error</th></tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>\n</body>\n</html>\n"
    )
    return _write_atomic(path, page.encode("utf-8"), force=True)
