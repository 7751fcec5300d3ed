"""The ``volbin export-slices`` command."""

from __future__ import annotations

import time
from typing import Any

# --- command line ------------------------------------------------------------------------------
EPILOG_EXPORT = """\
examples:
  volbin export-slices head.nii.gz stack/ --dpi 600x300 --layer 0.027mm
  volbin export-slices head.nii.gz stack/ --mode 3d --kernel stucki --rescale percentile
  volbin export-slices seg.nii.gz materials/ --labels          # one folder of layers per label
  volbin export-slices head.nii.gz stack/ --layers 0:100        # the first 100 layers only

Re-run the same command after an interruption: only missing layers are written.
"""


def _parse_dpi(text: str) -> tuple[float, float]:
    import argparse

    parts = text.lower().replace("dpi", "").split("x")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a resolution: {text!r} (e.g. 600x300 or 600)") from None
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or not all(v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"not a resolution: {text!r} (e.g. 600x300 or 600)")
    return vals[0], vals[1]


def _parse_length(text: str) -> float:
    import argparse

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
    if not v > 0:
        raise argparse.ArgumentTypeError(f"not a thickness: {text!r} (e.g. 0.027mm or 27um)")
    return v


def _parse_layers(text: str) -> tuple[int | None, int | None]:
    import argparse

    try:
        a, b = text.split(":")
        return (int(a) if a else None, int(b) if b else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a layer range: {text!r} (e.g. 0:100)") from None


def add_export_command(subparsers: Any) -> None:
    """Add ``volbin export-slices`` to the CLI's subparsers."""
    import argparse

    from .cli import _add_common
    from .recipe import CURVES, RESCALE_METHODS

    p = subparsers.add_parser(
        "export-slices",
        help="write a printer's stack of 1-bit PNG layers",
        epilog=EPILOG_EXPORT,
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
        "--mode",
        choices=("2d", "3d"),
        default="2d",
        help="diffuse error within layers (2d) or also into the next layer (3d)",
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
    p.add_argument("--order", type=int, default=1, help="interpolation order (default 1, linear)")
    p.add_argument(
        "--layers", type=_parse_layers, default=None, metavar="A:B", help="write only layers A to B-1"
    )
    p.add_argument(
        "--volume-index", type=int, default=None, metavar="N", help="the volume of a 4D input to print"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=64,
        metavar="N",
        help="with --mode 3d, save the carried error every N layers (default 64)",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the last 3d checkpoint when the stack is complete",
    )
    p.add_argument(
        "--force", action="store_true", help="start over in a folder holding an export with other settings"
    )
    g = p.add_argument_group("grey levels")
    g.add_argument("--recipe", metavar="JSON", help="reuse the rescale of a recipe or sidecar")
    g.add_argument("--rescale", choices=RESCALE_METHODS, help="intensity rescale (default minmax)")
    g.add_argument("--percentiles", type=float, nargs=2, metavar=("LO", "HI"))
    g.add_argument("--range", dest="value_range", type=float, nargs=2, metavar=("LO", "HI"))
    g.add_argument("--curve", choices=CURVES, help="tone curve (default linear)")
    g.add_argument("--gamma", type=float)
    g.add_argument("--log-gain", type=float)
    g.add_argument("--kernel", help="error-diffusion kernel (default floyd-steinberg)")
    g.add_argument("--serpentine", action="store_true", default=None, help="serpentine scan")
    g.add_argument("--jitter", type=float, help="threshold jitter amplitude in [0, 1]")
    g.add_argument("--seed", type=int, help="seed of the jitter (default 0)")
    _add_common(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: Any) -> int:
    from .cli import EXIT_OK, _configure, recipe_from_args
    from .io import load
    from .printer import export_slices

    recipe = recipe_from_args(args).replace(method="dither", threshold=None)
    t0 = time.perf_counter()
    chunk_bytes = _configure(args)
    res = export_slices(
        load(args.input, chunk_bytes=chunk_bytes, volume_axis=args.volume_axis),
        args.out_dir,
        dpi=args.dpi,
        layer=args.layer,
        mode=args.mode,
        labels=args.labels,
        recipe=recipe,
        up=args.up,
        order=args.order,
        layers=args.layers,
        volume_index=args.volume_index,
        force=args.force,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        chunk_bytes=chunk_bytes,
        progress=False if args.no_progress else None,
    )
    m = res.manifest
    n = m["layer_count"]
    print(
        f"wrote {len(res.written)} layer(s) to {res.out_dir} ({m['written']} of {n} present, "
        f"{m['status']}; {m['width']} x {m['height']} px at {m['dpi'][0]:g}x{m['dpi'][1]:g} dpi, "
        f"{m['pitch_mm'][2]:g} mm layers) in {time.perf_counter() - t0:.1f} s"
    )
    return EXIT_OK
