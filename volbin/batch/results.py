"""Batch results: what happened to each file, the run's summary, progress and JSON report."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import OutputFileError


# --- results -------------------------------------------------------------------------------
@dataclass
class FileResult:
    """What happened to one input: ``done``, ``skipped`` (up to date), ``failed`` (with a
    `reason`) or ``pending`` (not run: the batch was interrupted).  `note` says why an
    existing output was redone.

    For an output that exists (done, skipped, or failed after its mask was written), its
    sidecar's record: `thresholds` ``{"raw": ..., "rescaled": ...}`` (each a number, a list
    per group, or named values such as ``{"low": ..., "high": ...}`` for hysteresis and
    ``{"lower": ..., "upper": ...}`` with an upper bound; None for methods without a
    threshold), `foreground_voxels`, `foreground_mm3` (voxels times the voxel volume of the
    affine) and `preview` (the PNG its sidecar names).
    """

    input: str
    output: str | None
    status: str
    seconds: float | None = None
    reason: str | None = None
    note: str | None = None
    worker: str | None = None
    thresholds: dict[str, Any] | None = None
    foreground_voxels: int | None = None
    foreground_mm3: float | None = None
    preview: str | None = None


@dataclass
class BatchResult:
    """The outcome of `batch`: one `FileResult` per input, in input order."""

    files: list[FileResult]
    out_dir: str
    seconds: float
    report: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    index: str | None = None

    def _with(self, status: str) -> list[FileResult]:
        return [f for f in self.files if f.status == status]

    @property
    def done(self) -> list[FileResult]:
        return self._with("done")

    @property
    def skipped(self) -> list[FileResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[FileResult]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when every input has an up-to-date output."""
        return all(f.status in ("done", "skipped") for f in self.files)

    def summary(self) -> str:
        """A table of counts, then each failed input with its reason."""
        n = {s: len(self._with(s)) for s in ("done", "skipped", "failed", "pending")}
        rate = n["done"] / self.seconds if self.seconds > 0 else 0.0
        notes = {"done": f"({rate:.2f} files/s)", "skipped": "(up to date)"}
        lines = [f"volbin batch: {len(self.files)} inputs in {self.seconds:.1f} s"]
        lines += [
            f"  {s:<8} {k:>6}  {notes.get(s, '')}".rstrip() for s, k in n.items() if k or s != "pending"
        ]
        if self.failed:
            lines.append("failed inputs:")
            for f in self.failed:
                lines += [f"  {f.input}", f"      {_reason(f)}"]
        if self.report:
            lines.append(f"report: {self.report}")
        if self.index:
            lines.append(f"index: {self.index}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "engine": self.engine,
            "counts": {
                "total": len(self.files),
                **{s: len(self._with(s)) for s in ("done", "skipped", "failed", "pending")},
            },
            "files": [asdict(f) for f in self.files],
        }


def _thresholds(decision: dict[str, Any]) -> dict[str, Any] | None:
    """``{"raw": ..., "rescaled": ...}`` of a sidecar's decision record, or None."""
    if "low_raw" in decision:  # hysteresis
        names = {"low": "low", "high": "high"}
    elif "threshold_raw" in decision:
        names = {"threshold": "threshold"}
        if decision.get("upper_raw") is not None:
            names = {"lower": "threshold", "upper": "upper"}
    else:
        return None
    out = {}
    for units in ("raw", "rescaled"):
        values = {label: decision.get(f"{key}_{units}") for label, key in names.items()}
        out[units] = values["threshold"] if list(values) == ["threshold"] else values
    return out


def _outcome(output: str | None) -> dict[str, Any]:
    """The `FileResult` fields read from an output's sidecar: thresholds, foreground, preview.

    Empty when the output has no readable volbin sidecar.
    """
    from ..errors import VolbinError
    from ..io import read_sidecar
    from .inputs import _named_preview

    if not output:
        return {}
    try:
        record = read_sidecar(output)
    except (VolbinError, OSError):
        return {}
    steps = [s for s in record.get("steps") or [] if isinstance(s, dict)]
    if "volbin_version" not in record or not steps:
        return {}
    last = steps[-1]
    fg = last.get("foreground") if isinstance(last.get("foreground"), dict) else {}
    png = _named_preview(output)
    return {
        "thresholds": _thresholds(last.get("decision") or {}),
        "foreground_voxels": fg.get("voxels"),
        "foreground_mm3": fg.get("mm3"),
        "preview": str(png) if png is not None else None,
    }


def _reason(f: FileResult) -> str:
    """The reason `f` failed, without the file name volbin's messages start with."""
    reason = f.reason or ""
    for prefix in (f.input, os.path.abspath(f.input), os.path.basename(f.input)):
        if reason.startswith(prefix + ": "):
            return reason[len(prefix) + 2 :]
    return reason


# --- progress ------------------------------------------------------------------------------
class _Progress:
    """A bar over files on a terminal, one log line per finished file otherwise."""

    def __init__(self, mode: Any, total: int, skipped: int) -> None:
        if mode is None:
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = {True: "bar", False: "off"}.get(mode, mode)
        if self.mode not in ("bar", "log", "off"):
            raise ValueError(f"`progress` must be None, True, False, 'bar' or 'log'; got {mode!r}.")
        self.total, self.count = total, skipped
        self.bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=skipped, unit="file", desc="volbin batch", file=sys.stderr)

    def say(self, text: str) -> None:
        if self.mode == "bar":
            self.bar.write(f"volbin: {text}", file=sys.stderr)
        elif self.mode == "log":
            print(f"volbin: {text}", file=sys.stderr, flush=True)

    def file(self, r: FileResult) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            if r.status == "failed":
                self.say(f"failed {r.input}: {_reason(r)}")
        elif self.mode == "log":
            where = f" on {r.worker}" if r.worker else ""
            if r.status == "failed":
                text = f"failed {r.input}: {_reason(r)}"
            else:
                text = f"{r.status} {r.input} -> {_rel(r.output)} in {r.seconds or 0:.2f} s{where}"
                text += f" ({r.note})" if r.note else ""
            self.say(f"[{self.count}/{self.total}] {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _rel(path: str | None) -> str:
    """`path` relative to the current folder when it lies below it."""
    if not path:
        return ""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_report(res: BatchResult, path: str, started: str, recipe: dict[str, Any]) -> None:
    from .. import __version__
    from ..io import write_json

    doc = {
        "volbin_version": __version__,
        "started": started,
        "finished": _now(),
        "recipe": recipe,
        **res.to_dict(),
    }
    try:
        write_json(doc, path)
    except OSError as exc:
        raise OutputFileError(f"{path}: cannot write the batch report ({exc}).") from exc


def _write_index(res: BatchResult, path: str, recipe: Any) -> None:
    """The batch's HTML index: one row per input (`volbin.report_html.write_index_html`)."""
    from ..report_html import write_index_html

    absolute = [os.path.abspath(f.input) for f in res.files]
    root = os.path.commonpath([os.path.dirname(a) for a in absolute]) if absolute else ""
    rows = []
    for f, a in zip(res.files, absolute, strict=True):
        thresholds = f.thresholds or {}
        rows.append(
            {
                "name": os.path.relpath(a, root) if root else f.input,
                "status": f.status,
                "input": a if os.path.lexists(a) else None,
                "output": f.output if f.output and os.path.lexists(f.output) else None,
                "preview": f.preview,
                "thresholds": thresholds.get("raw"),
                "thresholds_rescaled": thresholds.get("rescaled"),
                "foreground_voxels": f.foreground_voxels,
                "foreground_mm3": f.foreground_mm3,
                "error": _reason(f) if f.status == "failed" else None,
                "note": f.note,
            }
        )
    n = len(res.files)
    described = f"method {recipe.method}, scope {recipe.scope}"
    if getattr(recipe, "rescale", None):
        described += f", rescale {recipe.rescale}"
    described += "; each output's sidecar holds its full recipe and thresholds."
    if res.interrupted:
        described += " The batch was interrupted: pending files were not run."
    try:
        write_index_html(
            rows, path, title=f"volbin batch: {n} input{'s' if n != 1 else ''}", description=described
        )
    except OSError as exc:
        raise OutputFileError(f"{path}: cannot write the batch index ({exc}).") from exc
