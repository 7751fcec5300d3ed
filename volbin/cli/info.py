"""``volbin info IN``: geometry and statistics of a volume, and its rendering error."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import EXIT_OK, add_common, chunk_bytes, float_in

EPILOG = """\
examples:
  volbin info brain.nii.gz
  volbin info brains.npy --volume-axis 0 --json > brains.json
  volbin info mask.nii.gz --compare brain.nii.gz --sigma 1.5   # how well a binary volume renders grey
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="describe a volume",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Shape, dtype, voxel size, orientation and per-volume statistics "
        "(min, max, mean, RMS, percentiles, NaN/Inf counts).",
    )
    p.add_argument("input", help="input volume")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--compare",
        metavar="GREY",
        help="IN is binary: measure how well it renders GREY, the volume it was made from",
    )
    p.add_argument(
        "--sigma",
        type=float_in(0, 50, open_lo=True),
        default=None,
        help="Gaussian blur of --compare in voxels, up to 50 (default 1)",
    )
    p.add_argument(
        "--scope",
        choices=("slice", "volume"),
        default=None,
        help="--compare blurs within slices (slice) or volumetrically (volume, default)",
    )
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import load
    from ..progress import progress
    from ..report import describe, format_description
    from ._common import UsageError

    if args.compare is None and (args.sigma is not None or args.scope is not None):
        raise UsageError(f"{'--sigma' if args.sigma is not None else '--scope'} is only used with --compare")
    cb = chunk_bytes(args)
    with progress("info", enabled=False if args.no_progress else None):
        vol = load(
            args.input, chunk_bytes=cb, volume_axis=args.volume_axis, allow_missing=args.allow_missing_chunks
        )
        info = describe(vol)
        if args.compare is not None:
            from ..dither.quality import compare_with_input

            info["compare"] = compare_with_input(
                args.input,
                args.compare,
                sigma=1.0 if args.sigma is None else args.sigma,
                scope=args.scope or "volume",
                chunk_bytes=cb,
                volume_axis=args.volume_axis,
                allow_missing=args.allow_missing_chunks,
            )
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_description(info, str(args.input)))
        if "compare" in info:
            from ..dither.quality import format_comparison

            print(format_comparison(info["compare"]))
    return EXIT_OK
