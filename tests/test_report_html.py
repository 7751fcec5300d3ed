"""The HTML index of a batch (`volbin.report_html`, written by `volbin.batch`).

References: each output's own sidecar (the thresholds), nibabel (the mask's voxels and the
voxel sizes of its header: mm^3 = voxels x the product of the zooms), Pillow (the previews
are PNG files of non-zero size), and html.parser (the page parses; what it links to).
"""

from __future__ import annotations

import importlib
import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pytest

import volbin
from volbin.batch import INDEX_NAME
from volbin.cli import main
from volbin.errors import OutputFileError
from volbin.io import read_sidecar
from volbin.report_html import is_volbin_index, write_index_html

SHAPE = (20, 24, 18)
#: Voxels that are not 1 mm, so that mm^3 differs from the voxel count.
ZOOMS = (0.8, 1.2, 1.5)
GOOD = ("sub-01", "sub-02", "sub-03")
BAD = "sub-04"


# --- reading the page ----------------------------------------------------------------------------
class Page(HTMLParser):
    """Rows of the index's table (cells with their text and attributes), images, links and
    every attribute value of the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[dict]] = []
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.attributes: list[str] = []
        self._in_body = False
        self._cell: dict | None = None
        self._div: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.attributes += list(a.values())
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._cell = {"attrs": a, "text": "", "head": "", "br": False, "imgs": [], "links": []}
            self._cell.update(error="", note="")
            self._div = None
            self.rows[-1].append(self._cell)
        elif tag == "br" and self._cell is not None:
            self._cell["br"] = True
        elif tag == "div" and self._cell is not None and a.get("class") in ("error", "note"):
            self._div = a["class"]
        elif tag == "img":
            self.imgs.append(a["src"])
            if self._cell is not None:
                self._cell["imgs"].append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
            if self._cell is not None:
                self._cell["links"].append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self._div = None
        elif tag == "td":
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
            if not self._cell["br"]:  # the text before the first line break
                self._cell["head"] += data
            if self._div:  # an error's or a note's text
                self._cell[self._div] += data


def read_page(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(text)
    page.close()
    return text, page


#: The columns; errors and notes are shown in the preview's (``<div class="error">``).
COLUMNS = ("subject", "status", "preview", "raw", "rescaled", "voxels", "mm3")


def cells(row: list[dict]) -> dict[str, dict]:
    assert len(row) == len(COLUMNS)
    return dict(zip(COLUMNS, row, strict=True))


def exact(cell: dict):
    return json.loads(cell["attrs"]["data-value"])


# --- inputs --------------------------------------------------------------------------------------
def write_cohort(folder: Path) -> list[Path]:
    """Three phantoms of 0.8 x 1.2 x 1.5 mm voxels and a truncated .nii.gz, BIDS-like."""
    paths = []
    for i, sub in enumerate((*GOOD, BAD)):
        p = folder / sub / "anat" / f"{sub}_T1w.nii.gz"
        p.parent.mkdir(parents=True)
        ph = volbin.phantom(SHAPE, seed=i, zooms=ZOOMS)
        nib.save(ph.to_nifti(), p)
        if sub == BAD:
            p.write_bytes(p.read_bytes()[:400])
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    write_cohort(folder / "data")
    return folder


def run_batch(cohort: Path, out: Path, *extra: str) -> int:
    pattern = str(cohort / "data" / "sub-*" / "anat" / "*_T1w.nii.gz")
    return main(["batch", pattern, "--out-dir", str(out), "--scheduler", "threads", "--no-progress", *extra])


# --- the batch's index ---------------------------------------------------------------------------
def test_index_rows_match_sidecars_masks_and_previews(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks"
    assert run_batch(cohort, out, "--method", "otsu", "--preview") == 1  # one input failed
    index = out / INDEX_NAME
    text, page = read_page(index)
    assert is_volbin_index(index)
    assert "http" not in text.lower()  # no resource, no link, nothing from the network
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    assert len(page.rows) == len(GOOD) + 1
    for ref in page.imgs + page.links:
        assert ref and not ref.startswith(("/", "file:", "data:")) and "://" not in ref, ref
    for ref in page.links:
        assert (out / unquote(ref)).exists(), ref
    rows = {cells(r)["subject"]["head"]: cells(r) for r in page.rows}
    assert sorted(rows) == [f"{s}/anat/{s}_T1w.nii.gz" for s in (*GOOD, BAD)]

    from PIL import Image

    for sub in GOOD:
        row = rows[f"{sub}/anat/{sub}_T1w.nii.gz"]
        mask_path = out / f"{sub}_T1w_mask.nii.gz"
        side = read_sidecar(mask_path)
        assert row["status"]["text"] == "done"
        # The preview: beside the mask, named in its sidecar, linked relatively, a real PNG.
        assert side["preview"] == f"{sub}_T1w_mask.png"
        (src,) = row["preview"]["imgs"]
        png = out / unquote(src)
        assert png == out / side["preview"] and png.is_file()
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width > 0 and img.height > 0
        # Thresholds: exactly the sidecar's, in raw units and rescaled, shown to 6 digits.
        decision = side["steps"][-1]["decision"]
        for column, key in (("raw", "threshold_raw"), ("rescaled", "threshold_rescaled")):
            assert exact(row[column]) == decision[key]
            assert row[column]["text"] == f"{decision[key]:.6g}"
        # Foreground: the mask's voxels (nibabel) times the product of its header's voxel sizes.
        img = nib.load(mask_path)
        count = int(np.count_nonzero(np.asarray(img.dataobj)))
        zooms = img.header.get_zooms()[:3]
        assert np.allclose(zooms, ZOOMS)
        assert exact(row["voxels"]) == count and row["voxels"]["text"] == f"{count:,}"
        assert math.isclose(exact(row["mm3"]), count * math.prod(float(z) for z in zooms), rel_tol=1e-12)
        assert exact(row["mm3"]) != pytest.approx(count)  # mm^3 is not the voxel count here
        assert row["preview"]["error"] == "" and row["preview"]["note"] == ""

    bad = rows[f"{BAD}/anat/{BAD}_T1w.nii.gz"]
    assert bad["status"]["text"] == "failed"
    assert "truncated or corrupt gzip data" in bad["preview"]["error"]
    assert bad["preview"]["imgs"] == [] and "data-value" not in bad["raw"]["attrs"]
    report = json.loads((out / "volbin-batch-report.json").read_text())
    (failed,) = [f for f in report["files"] if f["status"] == "failed"]
    assert failed["reason"].split(": ", 1)[1] == bad["preview"]["error"]


def test_index_without_preview_has_rows_without_pictures_and_is_redone_with_them(
    cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "masks"
    assert run_batch(cohort, out, "--method", "li") == 1
    _, page = read_page(out / INDEX_NAME)
    assert len(page.rows) == 4 and page.imgs == []
    assert not list(out.glob("*.png"))
    first = [exact(cells(r)["raw"]) for r in page.rows[:3]]
    # The same run with --preview draws only the pictures: the masks stay as they are.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.nii.gz")}
    res = volbin.batch(
        str(cohort / "data" / "sub-*" / "anat" / "*_T1w.nii.gz"),
        out,
        method="li",
        preview=True,
        scheduler="threads",
        progress=False,
    )
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_mask.nii.gz")} == stamps
    assert [f.status for f in res.files] == ["done"] * 3 + ["failed"]
    assert all(f.note and "only the preview" in f.note for f in res.files[:3])
    _, page = read_page(out / INDEX_NAME)
    assert len(page.imgs) == 3 and [exact(cells(r)["raw"]) for r in page.rows[:3]] == first
    # Up to date with their previews: skipped, and the index still shows them.
    again = volbin.batch(
        str(cohort / "data" / "sub-*" / "anat" / "*_T1w.nii.gz"),
        out,
        method="li",
        preview=True,
        scheduler="threads",
        progress=False,
    )
    assert [f.status for f in again.files] == ["skipped"] * 3 + ["failed"]
    assert all(f.preview and Path(f.preview).is_file() for f in again.files[:3])
    _, page = read_page(out / INDEX_NAME)
    assert len(page.imgs) == 3
    # Redone with another recipe and no --preview: the old pictures showed the old masks.
    assert run_batch(cohort, out, "--method", "otsu") == 1
    assert not list(out.glob("*.png"))
    assert all("preview" not in read_sidecar(p) for p in out.glob("*_mask.nii.gz"))


def test_failed_preview_fails_its_file_and_keeps_the_mask(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = importlib.import_module("volbin.preview")  # volbin.preview is the function
    real = module.preview

    def broken(volume, **kw):
        if str(kw.get("mask", "")).endswith("sub-02_T1w_mask.nii.gz"):
            raise RuntimeError("the renderer ran out of fonts")
        return real(volume, **kw)

    monkeypatch.setattr(module, "preview", broken)
    out = tmp_path / "masks"
    inputs = [cohort / "data" / s / "anat" / f"{s}_T1w.nii.gz" for s in GOOD]
    res = volbin.batch(inputs, out, method="otsu", preview=True, scheduler="threads", progress=False)
    assert [f.status for f in res.files] == ["done", "failed", "done"]
    reason = res.files[1].reason
    assert "sub-02_T1w_mask.nii.gz: the mask and its sidecar were written, but its preview failed" in reason
    assert "RuntimeError: the renderer ran out of fonts" in reason
    mask = out / "sub-02_T1w_mask.nii.gz"
    assert mask.is_file() and read_sidecar(mask)["steps"]
    assert not (out / "sub-02_T1w_mask.png").exists()
    assert res.files[1].thresholds is not None and res.files[1].foreground_voxels > 0
    _, page = read_page(out / INDEX_NAME)
    row = cells(page.rows[1])
    assert row["status"]["text"] == "failed" and "ran out of fonts" in row["preview"]["error"]
    assert row["preview"]["head"].startswith("preview missing") and "data-value" in row["raw"]["attrs"]
    # The next run draws the missing picture only.
    monkeypatch.setattr(module, "preview", real)
    again = volbin.batch(inputs, out, method="otsu", preview=True, scheduler="threads", progress=False)
    assert [f.status for f in again.files] == ["skipped", "done", "skipped"]
    assert (out / "sub-02_T1w_mask.png").is_file()


def test_files_volbin_did_not_write_are_left_alone(cohort: Path, tmp_path: Path) -> None:
    inputs = [cohort / "data" / s / "anat" / f"{s}_T1w.nii.gz" for s in GOOD[:2]]
    out = tmp_path / "masks"
    out.mkdir()
    theirs = out / "sub-01_T1w_mask.png"
    theirs.write_bytes(b"a picture of someone else's")
    res = volbin.batch(inputs, out, preview=True, scheduler="threads", progress=False)
    assert [f.status for f in res.files] == ["failed", "done"]
    assert "not written by volbin" in res.files[0].reason and "--force" in res.files[0].reason
    assert theirs.read_bytes() == b"a picture of someone else's"
    assert not (out / "sub-01_T1w_mask.nii.gz").exists()
    res = volbin.batch(inputs, out, preview=True, force=True, scheduler="threads", progress=False)
    assert res.ok and theirs.read_bytes().startswith(b"\x89PNG")
    # Someone else's index.html: refused before anything runs, unless given another name.
    (out / INDEX_NAME).write_text("<html><body>our lab's page</body></html>")
    with pytest.raises(OutputFileError, match="volbin did not write it"):
        volbin.batch(inputs, out, method="li", scheduler="threads", progress=False)
    assert read_sidecar(out / "sub-01_T1w_mask.nii.gz")["steps"][-1]["decision"]["method"] == "otsu"
    elsewhere = tmp_path / "review" / "cohort.html"
    elsewhere.parent.mkdir()
    res = volbin.batch(inputs, out, preview=True, index=elsewhere, scheduler="threads", progress=False)
    assert (out / INDEX_NAME).read_text() == "<html><body>our lab's page</body></html>"
    _, page = read_page(elsewhere)
    assert [unquote(s) for s in page.imgs] == [f"../masks/{s}_T1w_mask.png" for s in GOOD[:2]]
    assert all((elsewhere.parent / unquote(s)).is_file() for s in page.imgs)
    assert res.index == str(elsewhere)
    res = volbin.batch(inputs, out, index=False, report=False, scheduler="threads", progress=False)
    assert res.index is None


def test_previews_with_the_same_name_are_an_error_before_running(tmp_path: Path) -> None:
    ph = volbin.phantom(SHAPE, seed=0)
    nib.save(ph.to_nifti(), tmp_path / "brain.nii.gz")
    np.save(tmp_path / "brain.npy", ph.intensity)
    inputs = [tmp_path / "brain.nii.gz", tmp_path / "brain.npy"]
    with pytest.raises(ValueError, match=r"brain_mask\.\*"):
        volbin.batch(inputs, tmp_path / "out", preview=True, scheduler="threads", progress=False)
    assert not (tmp_path / "out" / "brain_mask.nii.gz").exists()
    res = volbin.batch(inputs, tmp_path / "out", scheduler="threads", progress=False)
    assert res.ok  # without previews the two outputs and their sidecars differ


def test_hysteresis_and_per_slice_thresholds_in_the_rows(cohort: Path, tmp_path: Path) -> None:
    inputs = [cohort / "data" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"]
    out = tmp_path / "h"
    res = volbin.batch(
        inputs,
        out,
        method="hysteresis",
        low_method="li",
        high_method="otsu",
        scheduler="threads",
        progress=False,
    )
    decision = read_sidecar(res.files[0].output)["steps"][-1]["decision"]
    _, page = read_page(out / INDEX_NAME)
    row = cells(page.rows[0])
    assert exact(row["raw"]) == {"low": decision["low_raw"], "high": decision["high_raw"]}
    assert row["raw"]["text"] == f"low {decision['low_raw']:.6g}; high {decision['high_raw']:.6g}"
    assert exact(row["rescaled"]) == {"low": decision["low_rescaled"], "high": decision["high_rescaled"]}
    out = tmp_path / "s"
    res = volbin.batch(inputs, out, method="otsu", scope="slice", scheduler="threads", progress=False)
    raw = read_sidecar(res.files[0].output)["steps"][-1]["decision"]["threshold_raw"]
    assert len(raw) == SHAPE[2]
    _, page = read_page(out / INDEX_NAME)
    row = cells(page.rows[0])
    assert exact(row["raw"]) == raw
    finite = [v for v in raw if v is not None]
    assert row["raw"]["text"].endswith(f"({len(raw)} in all; {min(finite):.6g} to {max(finite):.6g})")


# --- write_index_html itself ---------------------------------------------------------------------
def test_exact_values_named_thresholds_and_notes(tmp_path: Path) -> None:
    rows = [
        {
            "name": "a",
            "status": "done",
            "thresholds": {"lower": 0.1 + 0.2, "upper": float("inf")},
            "thresholds_rescaled": [0.25, None, 0.5],
            "foreground_voxels": 1234567,
            "foreground_mm3": 1234567 * 0.001,
            "note": "redone: <another recipe>",
        },
        {"name": "b", "thresholds": list(range(300)), "foreground_voxels": None},
    ]
    path = write_index_html(rows, tmp_path / "i.html", description="method otsu & co")
    text, page = read_page(path)
    a, b = (cells(r) for r in page.rows)
    assert exact(a["raw"]) == {"lower": 0.30000000000000004, "upper": None}  # JSON has no inf
    assert a["raw"]["text"] == "lower 0.3; upper inf"
    assert exact(a["rescaled"]) == [0.25, None, 0.5] and a["rescaled"]["text"] == "0.25, -, 0.5"
    assert a["voxels"]["text"] == "1,234,567" and exact(a["mm3"]) == 1234567 * 0.001
    assert a["preview"]["note"] == "redone: <another recipe>" and "method otsu &amp; co" in text
    assert "data-value" not in b["raw"]["attrs"]  # more than EXACT_VALUES: the text only
    assert b["raw"]["text"] == "0, 1, 2, 3, ... (300 in all; 0 to 299)" and b["voxels"]["text"] == "-"
    with pytest.raises(ValueError, match=r"rows\[0\]\['thresholds'\]"):
        write_index_html([{"name": "a", "thresholds": {"low": "high"}}], tmp_path / "j.html")
    assert not is_volbin_index(tmp_path / "missing.html")
