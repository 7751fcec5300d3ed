"""``volbin binarize IN OUT``: one volume to a binary volume with its JSON sidecar."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._common import (
    EXIT_OK,
    add_common,
    add_output_limit,
    add_recipe_args,
    chunk_bytes,
    max_output_bytes,
    recipe_from_args,
)

EPILOG = """\
examples:
  volbin binarize brain.nii.gz mask.nii.gz --method otsu --scope volume
  volbin binarize brains.nii.gz masks.nii.gz --method otsu --scope slice --axis z --rescale percentile
  volbin binarize brains.npy mask.npy --method stochastic --seed 7 --volume-axis 0
  volbin binarize brain.nii.gz mask.nii.gz --method value --threshold 0.3
  volbin binarize brain.nii.gz mask.nii.gz --recipe mask.json --force   # re-run a sidecar's recipe
  volbin binarize brain.nii.gz dithered.nii.gz --method dither --kernel floyd-steinberg --scope slice
  volbin binarize brain.nii.gz dithered.nii.gz --method dither --kernel stucki --scope volume --serpentine
  volbin binarize brain.nii.gz dithered.nii.gz --method dither --upsample 2 --jitter 0.2 --seed 3
  volbin binarize brain.nii.gz bayer.nii.gz --method ordered --matrix 8

A flag the chosen method does not use is refused (exit 2).  Foreground is value > threshold.
"""

#: Methods whose output renders grey levels: their rendering error is measured by default.
RENDERING_METHODS = ("stochastic", "dither", "ordered")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "binarize",
        help="binarize a volume",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Binarize IN (.nii, .nii.gz, .npy, .zarr) and write OUT with a JSON sidecar "
        "beside it recording the recipe and the thresholds used.",
    )
    p.add_argument("input", help="input volume")
    p.add_argument("output", help="output path (.nii, .nii.gz, .npy, .zarr)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument(
        "--dtype", choices=("uint8", "bool"), default=None, help="output dtype (bool: .npy/.zarr only)"
    )
    p.add_argument(
        "--no-quality",
        action="store_true",
        help="skip measuring the rendering error of stochastic/dither/ordered outputs "
        "(by default it is printed and stored in the sidecar)",
    )
    add_recipe_args(p)
    add_common(p)
    add_output_limit(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..binarize import binarize_volume
    from ..io import load, save
    from ..progress import progress

    recipe = recipe_from_args(args)
    if args.no_quality and recipe.method not in RENDERING_METHODS:
        from ._common import UsageError

        raise UsageError(f"--no-quality is not used by --method {recipe.method}")
    cb = chunk_bytes(args)
    t0 = time.perf_counter()
    with _output_lock(Path(args.output)), progress("binarize", enabled=False if args.no_progress else None):
        vol = load(
            args.input, chunk_bytes=cb, volume_axis=args.volume_axis, allow_missing=args.allow_missing_chunks
        )
        out = binarize_volume(vol, recipe)
        path = save(
            out, args.output, force=args.force, dtype=args.dtype, max_output_bytes=max_output_bytes(args)
        )
        quality = None
        if recipe.method in RENDERING_METHODS and not args.no_quality:
            try:
                quality = _record_quality(path, args, cb, recipe)
            except KeyboardInterrupt:
                print(
                    f"volbin: interrupted while measuring the rendering error: {path} and its "
                    "sidecar were written; the quality figures were not (re-run with --force to "
                    "measure them, or use volbin info --compare)",
                    file=sys.stderr,
                )
                return 130
    dec = out.steps[-1].get("decision", {})
    t = dec.get("threshold_raw")
    msg = f"wrote {path} ({recipe.method}, scope {recipe.scope}"
    if isinstance(t, float):
        msg += f", threshold {t:.6g}"
    elif isinstance(t, list):
        finite = [v for v in t if v is not None]
        if finite:
            msg += f", {len(t)} thresholds {min(finite):.6g}..{max(finite):.6g}"
    msg += f") in {time.perf_counter() - t0:.2f} s"
    print(msg)
    if quality is not None:
        print(
            f"quality: blurred RMS error {quality['blurred_rms']:.4f} (sigma {quality['sigma']:g} voxel, "
            f"per {quality['scope']}), mean density error {quality['mean_density_error']:+.2e}"
        )
    return EXIT_OK


@contextlib.contextmanager
def _output_lock(output: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside `output` while it is written, and remove the temporary
    files that a killed run left under its name (and its sidecar's)."""
    from ..io import TEMP_NAME, folder_lock, sidecar_path

    folder = output.parent
    if not folder.is_dir():  # io.save says so
        yield
        return
    with folder_lock(
        folder / f".{output.name}.lock",
        f"{output}: another volbin process is writing this output; wait for it to finish or "
        "choose another output path.",
        remove=True,
    ):
        bases = {output.name, sidecar_path(output).name}
        for e in os.scandir(folder):
            m = TEMP_NAME.match(e.name)
            if m and m["base"] in bases:
                _remove_temp(e.path)
        yield


def _remove_temp(path: str) -> None:
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _record_quality(path: Path, args: argparse.Namespace, cb: int | None, recipe: Any) -> dict[str, Any]:
    """Measure how well a dithered/stochastic output renders its input; store it in the sidecar."""
    from ..dither.quality import compare_with_input
    from ..io import update_sidecar

    metrics = compare_with_input(
        path,
        args.input,
        sigma=1.0,
        scope="slice" if recipe.scope == "slice" else "volume",
        chunk_bytes=cb,
        volume_axis=args.volume_axis,
        allow_missing=args.allow_missing_chunks,
    )
    update_sidecar(path, quality=metrics)
    return metrics
