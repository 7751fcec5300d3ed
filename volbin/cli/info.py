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
  volbin info mask.nii.gz --compare reference_mask.nii.gz        # two masks: Dice, Jaccard, volumes

A binary volume (every value 0 or 1) is described by its foreground voxel count, fraction
and volume in mm^3 (per volume for 4D) instead of percentiles.
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
        "--histogram",
        action="store_true",
        help="exposure statistics per volume (mean, RMS, median, percentiles) and a histogram (log counts)",
    )
    p.add_argument(
        "--compare",
        metavar="GREY",
        help="IN is binary: with a grey GREY, measure how well IN renders it (the volume it was made "
        "from); with a binary GREY (another mask), their Dice and Jaccard overlaps and volume difference",
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
    from ..overlap import binary_summary, compare_masks

    cb = chunk_bytes(args)
    with progress("info", enabled=False if args.no_progress else None):
        vol = load(
            args.input, chunk_bytes=cb, volume_axis=args.volume_axis, allow_missing=args.allow_missing_chunks
        )
        summary = binary_summary(vol)
        info = describe(vol) if summary is None else {**_geometry(vol), "binary": summary}
        other = None
        if args.compare is not None and summary is not None:
            other = load(args.compare, chunk_bytes=cb, volume_axis=args.volume_axis)
            if binary_summary(other) is None:
                other = None  # a grey volume: the rendering error below
            elif args.sigma is not None or args.scope is not None:
                raise UsageError(
                    f"{'--sigma' if args.sigma is not None else '--scope'} is not used when both "
                    "volumes are binary (their overlap is measured)"
                )
            else:
                info["compare"] = {"overlap": compare_masks(vol, other), "with": str(args.compare)}
        if args.compare is not None and other is None:
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
        if args.histogram:
            from ..exposure import exposure_stats

            info["exposure"] = exposure_stats(vol, scope="volume")
    if args.json:
        print(json.dumps(info, indent=2, default=_plain))
    elif "binary" in info:
        from ..overlap import format_binary, format_overlap

        print(format_description(info, str(args.input)) if "stats" in info else _format_geometry(info, args))
        print(format_binary(info["binary"]))
        if "compare" in info and "overlap" in info["compare"]:
            print(format_overlap(info["compare"]["overlap"], str(args.input), str(args.compare)))
        elif "compare" in info:
            from ..dither.quality import format_comparison

            print(format_comparison(info["compare"]))
    else:
        print(format_description(info, str(args.input)))
        if "compare" in info:
            from ..dither.quality import format_comparison

            print(format_comparison(info["compare"]))
        if "exposure" in info:
            from ..exposure import format_exposure

            print(format_exposure(info["exposure"]))
    return EXIT_OK


def _plain(obj: Any) -> Any:
    """numpy scalars and arrays in the exposure rows, as JSON."""
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def _geometry(vol: Any) -> dict[str, Any]:
    """What `volbin info` says of a volume's grid (`describe` without the statistics)."""
    from ..report import _orientation

    info: dict[str, Any] = {
        "shape": list(vol.shape),
        "dtype": str(vol.dtype),
        "zooms": [round(z, 6) for z in vol.zooms],
        "volume_axis": vol.volume_axis,
        "n_volumes": vol.n_volumes,
        "orientation": _orientation(vol),
    }
    if vol.source:
        info["source"] = vol.source
    return info


def _format_geometry(info: dict[str, Any], args: argparse.Namespace) -> str:
    o = info["orientation"]
    return "\n".join(
        [
            str(args.input),
            f"  shape       {tuple(info['shape'])}  "
            f"({info['n_volumes']} volume(s); volume axis {info['volume_axis']})",
            f"  dtype       {info['dtype']}",
            f"  voxel size  {' x '.join(f'{z:g}' for z in info['zooms'])}"
            + (f" {o['units']['space']}" if "units" in o else ""),
            f"  orientation {o['axcodes']}",
        ]
    )
