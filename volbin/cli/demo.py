"""``volbin demo``: the whole pipeline on a built-in phantom with known truth."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import EXIT_OK, int_in

EPILOG = """\
examples:
  volbin demo
  volbin demo --out-dir /tmp/demo --shape 181 217 181 --volumes 4
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the pipeline on a built-in phantom",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make an MRI-like phantom (3D and 4D) with ground truth, binarize it with "
        "Otsu, write NIfTI outputs and sidecars, and report thresholds, voxel counts and Dice.",
    )
    p.add_argument(
        "--out-dir", default="volbin-demo", help="folder for the demo's files (default ./volbin-demo)"
    )
    p.add_argument("--shape", type=int_in(8, 1024), nargs=3, default=(96, 112, 96), metavar=("X", "Y", "Z"))
    p.add_argument(
        "--volumes", type=int_in(1, 64), default=3, help="volumes in the 4D demo stack (default 3)"
    )
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out_dir), shape=tuple(args.shape), n_volumes=args.volumes, seed=args.seed)
    return EXIT_OK
