"""``volbin convert IN OUT``: copy a volume between NIfTI, .npy and zarr."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import EXIT_OK, add_common, add_output_limit, chunk_bytes, max_output_bytes

EPILOG = """\
examples:
  volbin convert brain.nii.gz brain.zarr
  volbin convert brains.npy brains.nii.gz --volume-axis 0     # (T, X, Y, Z) stack to NIfTI
  volbin convert big.zarr big.nii --chunk-mb 64 --force
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a volume between NIfTI, .npy and zarr",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Copy IN to OUT (.nii, .nii.gz, .npy, .zarr), streamed in chunks, keeping the "
        "affine and NIfTI header where OUT's format holds them.",
    )
    p.add_argument("input", help="input volume")
    p.add_argument("output", help="output path (.nii, .nii.gz, .npy, .zarr)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    add_common(p)
    add_output_limit(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import convert
    from ..progress import progress

    with progress("convert", enabled=False if args.no_progress else None):
        path = convert(
            args.input,
            args.output,
            force=args.force,
            chunk_bytes=chunk_bytes(args),
            volume_axis=args.volume_axis,
            allow_missing=args.allow_missing_chunks,
            max_output_bytes=max_output_bytes(args),
        )
    print(f"wrote {path}")
    return EXIT_OK
