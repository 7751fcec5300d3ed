"""``volbin classify IN OUT``: tissue classes by multi-Otsu or k-means, as labels or one mask per class."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import EXIT_OK, UsageError, add_common, chunk_bytes, float_in, int_in

EPILOG = """\
examples:
  volbin classify t1.nii.gz labels.nii.gz --method multi-otsu --classes 3 --stats-mask nonzero
  volbin classify t1.nii.gz labels.nii.gz --method kmeans --classes 3 --split     # one mask per class
  volbin classify t1_t2.nii.gz labels.nii.gz --method kmeans --classes 4 --channels  # 4th axis = contrasts
  volbin classify bold.nii.gz labels.nii.gz --method kmeans --classes 3 --scope volume --warm-start

Labels are uint8, darkest class first: 0..N-1, or with --mask 0 outside and 1..N inside.
With --channels, a voxel is inside --mask nonzero when any of its channels is non-zero.
--split writes <out>_class-<k><ext> for k = 1..N instead (the class thresholds or centres
go in each sidecar).
"""

#: Options only k-means uses (flag dests).
KMEANS_ONLY = ("warm_start", "seed", "max_iter", "tol", "channels")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "classify",
        help="tissue classes (multi-Otsu, k-means) as labels or one mask per class",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Split IN into N intensity classes per group (stack, volume or slice) from its exact "
        "histogram (multi-Otsu, k-means on intensities) or from voxel vectors of several contrasts.",
    )
    p.add_argument("input", help="input volume")
    p.add_argument("output", help="output labels (.nii, .nii.gz, .npy, .zarr)")
    p.add_argument("--method", choices=("multi-otsu", "kmeans"), required=True, help="how to classify")
    p.add_argument("--classes", type=int_in(2, 255), default=3, help="number of classes (default 3)")
    p.add_argument("--scope", choices=("stack", "volume", "slice"), default="volume", help="groups (volume)")
    p.add_argument("--axis", choices=("x", "y", "z"), default=None, help="slice axis for --scope slice (z)")
    p.add_argument(
        "--mask",
        metavar="M",
        help="classify inside M (0 outside): a file on the input's grid (3D with --channels) or 'nonzero' "
        "(each volume's non-zero voxels; with --channels, voxels where any channel is non-zero)",
    )
    p.add_argument(
        "--stats-mask", metavar="M", help="statistics inside M, labels everywhere (M as for --mask)"
    )
    p.add_argument(
        "--channels", action="store_true", help="k-means: the 4th axis holds contrasts of one subject"
    )
    p.add_argument(
        "--warm-start", action="store_true", help="k-means on a series: start from the previous volume"
    )
    p.add_argument("--seed", type=int_in(0, 2**63 - 1), default=None, help="k-means++ seed (0)")
    p.add_argument("--nbins", type=int_in(2, 2**20), default=None, help="histogram bins")
    p.add_argument("--max-iter", type=int_in(1, 10000), default=None, help="k-means: at most N updates (100)")
    p.add_argument("--tol", type=float_in(0, 1), default=None, help="k-means: stop when centres move less")
    p.add_argument("--split", action="store_true", help="one binary volume per class instead of labels")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_common(p)
    p.set_defaults(func=run)


def split_paths(output: str | Path, classes: int, offset: int = 1) -> list[Path]:
    """``labels.nii.gz`` -> ``labels_class-1.nii.gz``, ... (one per class, darkest first)."""
    from ..formats import image_ext

    out = Path(output)
    ext = image_ext(out.name) or out.suffix
    stem = out.name[: len(out.name) - len(ext)]
    return [out.with_name(f"{stem}_class-{k + offset}{ext}") for k in range(classes)]


def run(args: argparse.Namespace) -> int:
    from ..classify import classify
    from ..io import load, save, sidecar_path
    from ..progress import progress

    if args.method == "multi-otsu":
        used = [n for n in KMEANS_ONLY if getattr(args, n) not in (None, False)]
        if used:
            raise UsageError(f"--{used[0].replace('_', '-')} is not used by --method multi-otsu")
    if args.axis is not None and args.scope != "slice":
        raise UsageError(f"--axis is not used by --scope {args.scope}")
    if args.mask and args.stats_mask:
        raise UsageError("give --mask (labels 0 outside it) or --stats-mask (statistics only), not both")
    cb = chunk_bytes(args)
    outputs = split_paths(args.output, args.classes) if args.split else [Path(args.output)]
    if not args.force:
        for o in outputs:
            for p in (o, sidecar_path(o)):
                if p.exists():
                    raise UsageError(f"{p} exists; pass --force to overwrite it")
    with progress("classify", enabled=False if args.no_progress else None):
        vol = load(args.input, chunk_bytes=cb, volume_axis=args.volume_axis)
        kw: dict[str, Any] = {}
        for name in ("seed", "nbins", "max_iter", "tol"):
            if getattr(args, name) is not None:
                kw[name] = getattr(args, name)
        res = classify(
            vol,
            args.method,
            args.classes,
            scope=args.scope,
            axis=args.axis or "z",
            # Resolved by classify, which knows whether the 4th axis holds volumes (a mask per
            # volume) or channels (one mask for the voxel vectors).
            mask=args.mask,
            stats_mask=args.stats_mask,
            channels=args.channels,
            warm_start=args.warm_start,
            **kw,
        )
        if args.split:
            written = [save(m, o, force=args.force) for m, o in zip(res.split(), outputs, strict=True)]
        else:
            written = [save(res.labels, outputs[0], force=args.force)]
    its = "" if res.iterations is None else f", {int(res.iterations.max())} iteration(s) at most"
    for w in written:
        print(f"wrote {w}")
    print(f"{args.method}: {args.classes} classes, scope {args.scope}{its}")
    return EXIT_OK
