"""``volbin preview IN``: a PNG of slices of a volume, with a mask or labels and its histogram."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import EXIT_OK, UsageError, float_in, int_in, volume_axis

EPILOG = """\
examples:
  volbin preview t1.nii.gz                                   # three orthogonal slices + histogram
  volbin preview t1.nii.gz --mask m.nii.gz --out p.png --slices 12 --axis z
  volbin preview t1.nii.gz --labels labels.nii.gz            # a class map in colours
  volbin preview dithered.nii.gz --dithered                  # full-resolution crop beside a blurred view

The PNG is written beside IN as <name>_preview.png unless --out is given.  It is drawn
headless (matplotlib's Agg backend) in the orientation the affine gives.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "preview",
        help="draw a PNG preview of a volume",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Three orthogonal middle slices (or a montage along --axis), a mask outline or "
        "a label map over them, and the histogram with any thresholds, as a PNG.",
    )
    p.add_argument("input", help="input volume")
    p.add_argument("--out", help="output PNG (default: <input name>_preview.png beside the input)")
    p.add_argument("--force", action="store_true", help="overwrite an existing PNG")
    p.add_argument("--mask", metavar="M", help="a binary volume on the same grid")
    p.add_argument("--labels", metavar="L", help="a label map on the same grid (0 = background)")
    p.add_argument("--slices", type=int_in(1, 400), metavar="N", help="a montage of N slices along --axis")
    p.add_argument("--axis", choices=("x", "y", "z"), default=None, help="montage axis (default z)")
    p.add_argument(
        "--volumes", type=int_in(0), nargs="+", metavar="I", help="volumes of 4D data, one row each"
    )
    p.add_argument(
        "--volume-axis", type=volume_axis, default=None, metavar="N", help="volume axis of 4D .npy/zarr"
    )
    p.add_argument(
        "--convention",
        choices=("neurological", "radiological"),
        default="neurological",
        help="left-right convention",
    )
    p.add_argument(
        "--window",
        type=float_in(0, 100),
        nargs=2,
        default=(1.0, 99.0),
        metavar=("LO", "HI"),
        help="percentiles (1 99)",
    )
    p.add_argument(
        "--overlay", choices=("outline", "fill"), default=None, help="how a mask is drawn (outline)"
    )
    p.add_argument(
        "--thresholds",
        type=float_in(),
        nargs="+",
        metavar="T",
        help="raw thresholds to mark on the histogram",
    )
    p.add_argument(
        "--dithered", action="store_true", help="IN is a dithered volume: add a crop and a blurred view"
    )
    p.add_argument(
        "--sigma", type=float_in(0, 50, open_lo=True), default=None, help="blur of --dithered, in voxels"
    )
    p.add_argument("--no-histogram", action="store_true", help="slices only")
    p.add_argument("--dpi", type=float_in(20, 600), default=100.0, help="resolution of the PNG (100)")
    p.set_defaults(func=run)


def default_png(path: str | Path) -> Path:
    """``<name>_preview.png`` beside `path` (``t1.nii.gz`` -> ``t1_preview.png``)."""
    from ..formats import image_ext

    p = Path(path)
    ext = image_ext(p.name) or p.suffix
    return p.with_name(p.name[: len(p.name) - len(ext)] + "_preview.png")


def run(args: argparse.Namespace) -> int:
    from ..preview import preview

    if args.mask and args.labels:
        raise UsageError("--mask and --labels are drawn one at a time; give one of them")
    if args.axis is not None and args.slices is None:
        raise UsageError("--axis is only used with --slices N (a montage)")
    if args.sigma is not None and not args.dithered:
        raise UsageError("--sigma is only used with --dithered")
    if args.overlay is not None and not (args.mask or args.labels):
        raise UsageError("--overlay is only used with --mask or --labels")
    out = Path(args.out) if args.out else default_png(args.input)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must end with .png; got {str(out)!r}")
    preview(
        args.input,
        mask=args.mask,
        labels=args.labels,
        thresholds=args.thresholds,
        out=out,
        force=args.force,
        slices=args.slices,
        axis=args.axis,
        volumes=args.volumes,
        volume_axis=args.volume_axis,
        convention=args.convention,
        window=tuple(args.window),
        overlay=args.overlay,
        dithered=args.dithered,
        sigma=args.sigma,
        histogram=not args.no_histogram,
        dpi=args.dpi,
    )
    print(f"wrote {out}")
    return EXIT_OK
