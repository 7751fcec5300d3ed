"""``volbin export-slices IN OUT_DIR``: a bitmap 3D printer's stack of 1-bit PNG layers."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from ._common import (
    EXIT_OK,
    add_common,
    add_output_limit,
    add_recipe_args,
    chunk_bytes,
    int_in,
    max_output_bytes,
    recipe_from_args,
)

EPILOG = """\
examples:
  volbin export-slices head.nii.gz stack/ --dpi 600x300 --layer 0.027mm
  volbin export-slices head.nii.gz stack/ --scope volume --kernel stucki --rescale percentile
  volbin export-slices seg.nii.gz materials/ --labels          # one folder of layers per label
  volbin export-slices head.nii.gz stack/ --layers 0:100        # the first 100 layers only

Re-run the same command after an interruption: only missing layers are written.
"""


def _parse_dpi(text: str) -> tuple[float, float]:
    parts = text.lower().replace("dpi", "").split("x")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a resolution: {text!r} (e.g. 600x300 or 600)") from None
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"not a resolution: {text!r} (e.g. 600x300 or 600)")
    if not all(10 <= v <= 20000 for v in vals):
        raise argparse.ArgumentTypeError(f"printer resolution must lie in 10..20000 dpi; got {text!r}")
    return vals[0], vals[1]


def _parse_length(text: str) -> float:
    t = text.strip().lower()
    scale = 1.0
    for unit, s in (("mm", 1.0), ("um", 1e-3), ("µm", 1e-3), ("μm", 1e-3)):
        if t.endswith(unit):
            t, scale = t[: -len(unit)], s
            break
    try:
        v = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a thickness: {text!r} (e.g. 0.027mm or 27um)") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"not a thickness: {text!r} (e.g. 0.027mm or 27um)")
    if not 1e-3 <= v <= 100:
        raise argparse.ArgumentTypeError(f"layer thickness must lie in 1um..100mm; got {text!r}")
    return v


def _parse_layers(text: str) -> tuple[int | None, int | None]:
    try:
        a, b = text.split(":")
        lo, hi = (int(a) if a else None, int(b) if b else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a layer range: {text!r} (e.g. 0:100)") from None
    if (
        (lo is not None and lo < 0)
        or (hi is not None and hi < 0)
        or (lo is not None and hi is not None and hi <= lo)
    ):
        raise argparse.ArgumentTypeError(f"not a layer range: {text!r} (A:B with 0 <= A < B)")
    return lo, hi


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export-slices",
        help="write a printer's stack of 1-bit PNG layers",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Resample IN onto a bitmap 3D printer's grid, error-diffuse every layer "
        "and write one 1-bit PNG per layer (with its DPI) and manifest.json into OUT_DIR. "
        "Streams a layer at a time and resumes where a stopped run left off.",
    )
    p.add_argument("input", help="input volume (grey levels, or a label map with --labels)")
    p.add_argument("out_dir", help="output folder (created if missing)")
    p.add_argument(
        "--dpi",
        type=_parse_dpi,
        default=(600.0, 300.0),
        metavar="XxY",
        help="printer resolution in x and y (default 600x300)",
    )
    p.add_argument(
        "--layer",
        type=_parse_length,
        default=0.027,
        metavar="T",
        help="layer thickness, e.g. 0.027mm or 27um (default 0.027mm)",
    )
    p.add_argument(
        "--scope",
        choices=("slice", "volume"),
        default="slice",
        help="diffuse error within each layer (slice, default) or also into the next layer (volume)",
    )
    p.add_argument(
        "--labels", action="store_true", help="IN is an integer label map: one stack per label, no dithering"
    )
    p.add_argument(
        "--up",
        choices=("S", "I", "A", "P", "R", "L"),
        default="S",
        help="anatomical direction printed upwards (default S)",
    )
    p.add_argument("--order", type=int_in(0, 5), default=1, help="interpolation order (default 1, linear)")
    p.add_argument(
        "--layers", type=_parse_layers, default=None, metavar="A:B", help="write only layers A to B-1"
    )
    p.add_argument(
        "--volume-index", type=int_in(0), default=None, metavar="N", help="the volume of a 4D input to print"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int_in(1),
        default=64,
        metavar="N",
        help="with --scope volume, save the carried error every N layers (default 64)",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the last 3d checkpoint when the stack is complete",
    )
    p.add_argument(
        "--force", action="store_true", help="start over in a folder holding an export with other settings"
    )
    add_recipe_args(
        p,
        (
            "rescale",
            "percentiles",
            "value_range",
            "curve",
            "gamma",
            "log_gain",
            "kernel",
            "serpentine",
            "jitter",
            "seed",
        ),
        title="grey levels",
    )
    add_common(p)
    add_output_limit(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import load
    from ..printer import export_slices

    recipe = recipe_from_args(args, method="dither")
    t0 = time.perf_counter()
    cb = chunk_bytes(args)
    res = export_slices(
        load(
            args.input, chunk_bytes=cb, volume_axis=args.volume_axis, allow_missing=args.allow_missing_chunks
        ),
        args.out_dir,
        dpi=args.dpi,
        layer=args.layer,
        scope=args.scope,
        labels=args.labels,
        recipe=recipe,
        up=args.up,
        order=args.order,
        layers=args.layers,
        volume_index=args.volume_index,
        force=args.force,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        chunk_bytes=cb,
        progress=False if args.no_progress else None,
        max_output_bytes=max_output_bytes(args),
    )
    m = res.manifest
    n = m["layer_count"]
    print(
        f"wrote {len(res.written)} layer(s) to {res.out_dir} ({m['written']} of {n} present, "
        f"{m['status']}; {m['width']} x {m['height']} px at {m['dpi'][0]:g}x{m['dpi'][1]:g} dpi, "
        f"{m['pitch_mm'][2]:g} mm layers) in {time.perf_counter() - t0:.1f} s"
    )
    return EXIT_OK
