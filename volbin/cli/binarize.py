"""``volbin binarize IN OUT``: one volume to a binary volume with its JSON sidecar."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..recipe import RENDERING_METHODS
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
  volbin binarize t1.nii.gz wm.nii.gz --method otsu --mask brain.nii.gz   # inside the brain, 0 outside
  volbin binarize t1.nii.gz m.nii.gz --stats-mask brain.nii.gz   # decided inside, applied everywhere
  volbin binarize t1.nii.gz m.nii.gz --method percentile --percentile 95 --mask nonzero   # fslmaths -thrP
  volbin binarize t1.nii.gz m.nii.gz --method value --threshold 0.2 --upper 0.6 --inclusive
  volbin binarize t1.nii.gz csf.nii.gz --method otsu --invert --mask brain_mask.nii.gz
  volbin binarize sub-02.nii.gz m2.nii.gz --threshold-from sub-01_mask.json   # sub-01's thresholds
  volbin binarize t1.nii.gz m.nii.gz --method local --local sauvola --block-size 15 --scope slice
  volbin binarize t1.nii.gz m.nii.gz --method hysteresis --low 0.2 --high 0.5 --connectivity 3
  volbin binarize t1.nii.gz m.nii.gz --method hysteresis --low-method li --high-method otsu
  volbin binarize t1.nii.gz h.nii.gz --method otsu --keep-largest --fill-holes 2d --closing 1

A flag the chosen method does not use is refused (exit 2).  Foreground is value > threshold
(volbin's default; --inclusive gives value >= threshold, as fslmaths -thr and nilearn).
The line printed and the sidecar give the foreground voxel count, fraction and volume (mm^3).
Clean-up options (--opening, --min-size, --keep-largest, --closing, --fill-holes) follow any
thresholding method, in that order; the sidecar records the voxels each removed and added.
"""


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
        "--quality",
        action="store_true",
        help="also measure the rendering error of a stochastic/dither/ordered output (RMS "
        "difference of output and input both blurred), print it and store it in the sidecar; "
        "one more pass over input and output (volbin info --compare measures it later)",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="also write OUT's name with .png: the input's slices with the mask over them and the "
        "histogram with the thresholds (named in the sidecar)",
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
    if args.quality and recipe.method not in RENDERING_METHODS:
        from ._common import UsageError

        raise UsageError(f"--quality is not used by --method {recipe.method}")
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
        if args.quality:
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
        png = _write_preview(path, args) if args.preview else None
    dec = out.steps[-1].get("decision", {})
    t = dec.get("threshold_raw")
    msg = f"wrote {path} ({recipe.method}, scope {recipe.scope}"
    if isinstance(t, float):
        msg += f", threshold {t:.6g}"
    elif isinstance(t, list):
        finite = [v for v in t if v is not None]
        if finite:
            msg += f", {len(t)} thresholds {min(finite):.6g}..{max(finite):.6g}"
    if isinstance(dec.get("low_raw"), float) and isinstance(dec.get("high_raw"), float):
        msg += f", low {dec['low_raw']:.6g}, high {dec['high_raw']:.6g}"
    msg += f") in {time.perf_counter() - t0:.2f} s"
    print(msg)
    tally = out.steps[-1].get("foreground")
    if hasattr(tally, "summary"):
        print(f"  {tally.summary()}")
    if png is not None:
        print(f"wrote {png}")
    if quality is not None:
        print(
            f"quality: rendering error {_fmt(quality['support_rms'], 4)} inside the input's support, "
            f"{quality['perceptual_rms']:.4f} overall (RMS, both blurred, sigma {quality['sigma']:g} "
            f"voxel, per {quality['scope']}); blurred RMS {quality['blurred_rms']:.4f}; "
            f"mean density error {quality['mean_density_error']:+.2e}"
        )
    return EXIT_OK


def _write_preview(path: Path, args: argparse.Namespace) -> Path:
    """The preview PNG beside the output (``m.nii.gz`` -> ``m.png``), named in its sidecar."""
    from ..preview import preview_output

    return preview_output(path, args.input, force=args.force, volume_axis=args.volume_axis)


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


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
