"""Make every picture of the documentation from the phantom: ``docs/img/*.png``.

python scripts/make_figures.py                 # writes docs/img/*.png
python scripts/make_figures.py --out DIR       # elsewhere (tests compare two runs)
python scripts/make_figures.py --only printing # one picture

Every picture is a function of `FIGURES`; the same volbin, numpy, Pillow and matplotlib give
the same bytes on every run.  tests/test_docs.py checks that the docs show exactly these.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import volbin

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"
#: The phantom every picture is made from, and the axial slice shown.
SHAPE = (120, 140, 120)
SEED = 0
#: Options some methods need to decide (the rest take none).
METHOD_OPTIONS = {"percentile": {"percentile": 75.0}}


@cache
def _phantom() -> volbin.Phantom:
    return volbin.phantom(SHAPE, seed=SEED)


def _z() -> int:
    return SHAPE[2] // 2


_WHITE = {"L": 255, "RGB": (255, 255, 255)}
_BLACK = {"L": 0, "RGB": (0, 0, 0)}


def _tile(arr: np.ndarray, label: str, scale: int = 2) -> Image.Image:
    a = np.asarray(arr, dtype=np.float64)
    img = Image.fromarray(np.flipud((np.clip(a, 0, 1) * 255).astype(np.uint8).T))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    canvas = Image.new("L", (img.width, img.height + 16), 255)
    canvas.paste(img, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), label, fill=0)
    return canvas


def _row(tiles: list[Image.Image]) -> Image.Image:
    w = sum(t.width for t in tiles) + 4 * (len(tiles) - 1)
    out = Image.new(tiles[0].mode, (w, max(t.height for t in tiles)), _WHITE[tiles[0].mode])
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + 4
    return out


def _grid(tiles: list[Image.Image], columns: int) -> Image.Image:
    rows = [_row(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    size = (max(r.width for r in rows), sum(r.height + 4 for r in rows) - 4)
    out = Image.new(rows[0].mode, size, _WHITE[rows[0].mode])
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + 4
    return out


def thresholds() -> Image.Image:
    """A few threshold methods and scopes (docs/methods.md, Thresholds)."""
    x = _phantom().intensity
    z = _z()
    shown = [
        ("input (min-max)", volbin.rescale(x)),
        ("otsu", volbin.binarize(x, "otsu")),
        ("li", volbin.binarize(x, "li")),
        ("triangle", volbin.binarize(x, "triangle")),
        ("otsu per slice", volbin.binarize(x, "otsu", scope="slice")),
    ]
    return _row([_tile(a[:, :, z], name) for name, a in shown])


def all_thresholds() -> Image.Image:
    """Every histogram threshold method volbin has, with its threshold in raw units."""
    from volbin.recipe import HISTOGRAM_METHODS

    x = _phantom().intensity
    z = _z()
    tiles = [_tile(volbin.rescale(x)[:, :, z], "input (min-max)", scale=1)]
    for method in HISTOGRAM_METHODS:
        opts = METHOD_OPTIONS.get(method, {})
        try:
            t = float(volbin.threshold(x, method, **opts))
            mask = volbin.binarize(x, method, **opts)
            tiles.append(_tile(mask[:, :, z], f"{method} {t:.0f}", scale=1))
        except (ValueError, volbin.VolbinError):  # a method may find no threshold
            tiles.append(_tile(np.full(x.shape[:2], 0.5), f"{method}: none", scale=1))
    return _grid(tiles, columns=8)


def dithering() -> Image.Image:
    """Stochastic, ordered and error-diffusion renderings (docs/methods.md)."""
    x = _phantom().intensity
    z = _z()
    shown = [
        ("stochastic", volbin.binarize(x, "stochastic", seed=0)),
        ("bayer 8", volbin.binarize(x, "ordered", matrix=8, scope="slice")),
        ("blue noise 64", volbin.binarize(x, "ordered", pattern="blue-noise", matrix=64, scope="slice")),
        ("floyd-steinberg", volbin.dither(x, "floyd-steinberg", scope="slice")),
        ("stucki serpentine", volbin.dither(x, "stucki", scope="slice", serpentine=True)),
        ("3D floyd-steinberg", volbin.dither(x, "floyd-steinberg-3d", scope="volume")),
    ]
    return _row([_tile(a[:, :, z], name) for name, a in shown])


def rescale() -> Image.Image:
    """Rescales and tone curves (docs/methods.md)."""
    x = _phantom().intensity
    z = _z()
    shown = [
        ("linear", volbin.rescale(x)),
        ("gamma 0.5", volbin.rescale(x, curve="gamma", gamma=0.5)),
        ("log", volbin.rescale(x, curve="log")),
        ("equalize", volbin.rescale(x, curve="equalize")),
        ("percentile 2-98", volbin.rescale(x, "percentile", percentiles=(2, 98))),
    ]
    return _row([_tile(a[:, :, z], name) for name, a in shown])


def preview() -> bytes:
    """What ``volbin binarize ... --preview`` draws: slices, the Otsu mask, the histogram."""
    ph = _phantom()
    t = float(volbin.threshold(ph.intensity, "otsu"))
    mask = volbin.binarize(ph.intensity, "otsu")
    return volbin.preview(ph.intensity, mask=mask, thresholds=t, dpi=80)


def classify() -> Image.Image:
    """Three classes inside the brain (multi-Otsu, as ``volbin preview --labels`` draws them),
    and an Otsu head mask before and after clean-up (docs/classify.md)."""
    ph = _phantom()
    x = ph.intensity
    otsu = volbin.classify(x, "multi-otsu", 3, mask=ph.brain)
    names = {1: "CSF", 2: "grey matter", 3: "white matter"}
    labels = volbin.preview(
        x, labels=otsu.labels, label_names=names, thresholds=list(otsu.thresholds), dpi=60
    )
    top = _labelled(Image.open(io.BytesIO(labels)).convert("RGB"), "multi-otsu, 3 classes, --mask brain")
    cleaned = volbin.binarize(x, "otsu", keep_largest=True, fill_holes="3d")
    masks = [("otsu", volbin.binarize(x, "otsu")), ("otsu --keep-largest --fill-holes 3d", cleaned)]
    tiles = []
    for text, mask in masks:
        png = volbin.preview(x, mask=mask, slices=1, axis="z", histogram=False, dpi=60)
        tiles.append(_labelled(Image.open(io.BytesIO(png)).convert("RGB"), text))
    return _grid([top, _row(tiles)], columns=1)


#: Two "scanners": the same anatomy at another scale and contrast (docs/normalize.md).
SCANNERS = ({"seed": 1}, {"seed": 2, "max_intensity": 650.0, "means": {"white_matter": 0.78, "csf": 0.32}})


def normalize() -> Image.Image:
    """Brain histograms of two scanners: raw, z-scored, and on a Nyul scale learnt from both."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    phs = [volbin.phantom((80, 96, 80), **kw) for kw in SCANNERS]
    masks = [ph.brain for ph in phs]
    landmarks = volbin.fit_nyul([ph.intensity for ph in phs], masks)
    pairs = list(zip(phs, masks, strict=True))
    shown = {
        "raw": [ph.intensity for ph in phs],
        "--method zscore": [volbin.normalize(ph.intensity, "zscore", mask=m) for ph, m in pairs],
        "--method nyul": [
            volbin.normalize(ph.intensity, "nyul", mask=m, landmarks=landmarks) for ph, m in pairs
        ],
    }
    fig = Figure(figsize=(9.0, 2.4), dpi=80, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    for k, (title, volumes) in enumerate(shown.items()):
        ax = fig.add_subplot(1, 3, k + 1)
        for i, (v, m) in enumerate(zip(volumes, masks, strict=True)):
            ax.hist(np.asarray(v)[m], bins=120, histtype="step", lw=1.2, label=f"scanner {i + 1}")
        ax.set_title(title, fontsize=9)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    fig.axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def printing() -> Image.Image:
    """One printer layer through the middle of the head: 2D and 3D diffusion, and labels."""
    import nibabel as nib

    from volbin.printer import print_grid

    ph = volbin.phantom((60, 70, 60), seed=SEED, zooms=(2.0, 2.0, 2.0))
    dpi, layer = (64.0, 64.0), 0.5
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        grey, labels = Path(tmp) / "head.nii.gz", Path(tmp) / "labels.nii.gz"
        nib.save(ph.to_nifti(), grey)
        nib.save(nib.Nifti1Image(ph.labels, ph.affine), labels)
        mid = print_grid(volbin.load(grey), dpi, layer).shape[2] // 2
        for scope in ("slice", "volume"):
            out = Path(tmp) / scope
            volbin.export_slices(
                grey, out, dpi=dpi, layer=layer, scope=scope, layers=(mid, mid + 1), progress=False
            )
            img = Image.open(out / f"layer_{mid:05d}.png").convert("L")
            tiles.append(_labelled(img, f"layer {mid}, --scope {scope}"))
        out = Path(tmp) / "labels"
        volbin.export_slices(
            labels, out, dpi=dpi, layer=layer, labels=True, layers=(mid, mid + 1), progress=False
        )
        tiles.append(_labelled(_label_layer(out, mid, ph.classes), f"layer {mid}, --labels"))
    return _row([t.convert("RGB") for t in tiles])


def _labelled(img: Image.Image, label: str) -> Image.Image:
    canvas = Image.new(img.mode, (img.width, img.height + 16), _WHITE[img.mode])
    canvas.paste(img, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), label, fill=_BLACK[img.mode])
    return canvas


#: Colours of the label materials in the printing picture (class value -> RGB).
_LABEL_COLOURS = {
    1: (70, 130, 220),
    2: (150, 150, 150),
    3: (240, 240, 240),
    4: (230, 180, 60),
    5: (200, 80, 60),
}


def _label_layer(folder: Path, layer: int, classes: dict[str, int]) -> Image.Image:
    rgb = None
    for value in sorted(classes.values()):
        f = folder / f"label_{value}" / f"layer_{layer:05d}.png"
        if not f.exists():
            continue
        on = np.asarray(Image.open(f).convert("L")) > 0
        if rgb is None:
            rgb = np.zeros((*on.shape, 3), np.uint8)
        rgb[on] = _LABEL_COLOURS.get(value, (255, 0, 255))
    return Image.fromarray(rgb)


#: Picture file name -> function making it (a PIL image or PNG bytes).
FIGURES: dict[str, Callable[[], Image.Image | bytes]] = {
    "thresholds.png": thresholds,
    "all-thresholds.png": all_thresholds,
    "dithering.png": dithering,
    "rescale.png": rescale,
    "preview.png": preview,
    "printing.png": printing,
    "classify.png": classify,
    "normalize.png": normalize,
}


def write(name: str, out_dir: Path) -> Path:
    made = FIGURES[name]()
    path = out_dir / name
    if isinstance(made, bytes):
        path.write_bytes(made)
    else:
        buf = io.BytesIO()
        made.save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder of the pictures (default {OUT})")
    parser.add_argument(
        "--only",
        type=lambda name: name if name.endswith(".png") else f"{name}.png",
        choices=sorted(FIGURES),
        nargs="+",
        help="make only these pictures (names with or without .png)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or FIGURES:
        write(name, args.out)
    print(f"wrote {sorted(args.only or FIGURES)} to {args.out}")


if __name__ == "__main__":
    main()
