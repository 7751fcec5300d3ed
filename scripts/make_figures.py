"""Make the pictures of docs/methods.md: one axial phantom slice through every method.

python scripts/make_figures.py            # writes docs/img/*.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import volbin

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"


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
    out = Image.new("L", (w, max(t.height for t in tiles)), 255)
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + 4
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ph = volbin.phantom((120, 140, 120), seed=0)
    x = ph.intensity
    z = x.shape[2] // 2
    grey = volbin.rescale(x)
    thresholds = [
        ("input (min-max)", grey),
        ("otsu", volbin.binarize(x, "otsu")),
        ("li", volbin.binarize(x, "li")),
        ("triangle", volbin.binarize(x, "triangle")),
        ("otsu per slice", volbin.binarize(x, "otsu", scope="slice")),
    ]
    _row([_tile(a[:, :, z], name) for name, a in thresholds]).save(OUT / "thresholds.png")
    dithers = [
        ("stochastic", volbin.binarize(x, "stochastic", seed=0)),
        ("bayer 8", volbin.binarize(x, "ordered", matrix=8, scope="slice")),
        ("blue noise 64", volbin.binarize(x, "ordered", pattern="blue-noise", matrix=64, scope="slice")),
        ("floyd-steinberg", volbin.dither(x, "floyd-steinberg", scope="slice")),
        ("stucki serpentine", volbin.dither(x, "stucki", scope="slice", serpentine=True)),
        ("3D floyd-steinberg", volbin.dither(x, "floyd-steinberg-3d", scope="volume")),
    ]
    _row([_tile(a[:, :, z], name) for name, a in dithers]).save(OUT / "dithering.png")
    curves = [
        ("linear", grey),
        ("gamma 0.5", volbin.rescale(x, curve="gamma", gamma=0.5)),
        ("log", volbin.rescale(x, curve="log")),
        ("equalize", volbin.rescale(x, curve="equalize")),
        ("percentile 2-98", volbin.rescale(x, "percentile", percentiles=(2, 98))),
    ]
    _row([_tile(a[:, :, z], name) for name, a in curves]).save(OUT / "rescale.png")
    print(f"wrote {sorted(p.name for p in OUT.glob('*.png'))} to {OUT}")


if __name__ == "__main__":
    main()
