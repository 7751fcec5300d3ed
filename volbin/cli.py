"""The `volbin` command line: flags -> Recipe -> the Python API.

No logic lives here that the API lacks.  Errors reach the user as one line and an exit
code (2 for usage, 1 for bad data or files); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import dask

from .errors import VolbinError, VolbinFileError
from .recipe import CURVES, METHODS, RESCALE_METHODS, SCOPES, Recipe

__all__ = ["main"]

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(message)


def _parse_memory(text: str) -> int:
    units = {
        "": 1,
        "B": 1,
        "K": 2**10,
        "KB": 10**3,
        "KIB": 2**10,
        "M": 2**20,
        "MB": 10**6,
        "MIB": 2**20,
        "G": 2**30,
        "GB": 10**9,
        "GIB": 2**30,
        "T": 2**40,
        "TB": 10**12,
        "TIB": 2**40,
    }
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    unit = t[len(num) :]
    try:
        value = float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (e.g. 4GB, 512MiB)") from None
    if unit not in units or value <= 0:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (e.g. 4GB, 512MiB)")
    return int(value * units[unit])


def chunk_bytes_for(memory_limit: int | None, threads: int | None = None) -> int | None:
    """Input chunk size that keeps a threaded run under `memory_limit` bytes.

    Each thread holds up to about eight chunk-sized buffers at its peak (input, float64 and float32
    intermediates, output); the interpreter and its libraries take ~300 MB before any data.
    """
    if memory_limit is None:
        return None
    threads = threads or os.cpu_count() or 1
    usable = max(memory_limit - 300 * 2**20, 16 * 2**20)
    return max(2**20, min(64 * 2**20, usable // (threads * 8)))


EPILOG_BINARIZE = """\
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
"""

EPILOG_INFO = """\
examples:
  volbin info brain.nii.gz
  volbin info brains.npy --volume-axis 0 --json > brains.json
  volbin info mask.nii.gz --compare brain.nii.gz --sigma 1.5   # how well a binary volume renders grey
"""

EPILOG_DEMO = """\
examples:
  volbin demo
  volbin demo --out-dir /tmp/demo --shape 181 217 181 --volumes 4
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--volume-axis",
        type=_volume_axis,
        default=None,
        metavar="N",
        help="axis of 4D input that indexes volumes (NIfTI: 3; np.stack-ed .npy: 0)",
    )
    p.add_argument(
        "--memory-limit",
        type=_parse_memory,
        default=None,
        metavar="SIZE",
        help="keep peak memory under SIZE (e.g. 4GB) by choosing chunk sizes",
    )
    p.add_argument(
        "--chunk-mb",
        type=_positive_float,
        default=None,
        metavar="MB",
        help="input chunk size in MiB (default 32; overrides --memory-limit)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    d = Recipe()
    g = p.add_argument_group("recipe")
    g.add_argument(
        "--recipe",
        metavar="JSON",
        help="a recipe as JSON, or a sidecar .json whose recipe to reuse; flags given too override it",
    )
    g.add_argument("--method", choices=METHODS, help=f"how to binarize (default {d.method})")
    g.add_argument(
        "--scope", choices=SCOPES, help=f"one decision per stack, volume or slice (default {d.scope})"
    )
    g.add_argument("--axis", choices=("x", "y", "z"), help="slice axis for --scope slice (default z)")
    g.add_argument("--rescale", choices=RESCALE_METHODS, help=f"intensity rescale (default {d.rescale})")
    g.add_argument(
        "--percentiles",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="percentiles for --rescale percentile (default 1 99)",
    )
    g.add_argument(
        "--range",
        dest="value_range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="raw range for --rescale fixed",
    )
    g.add_argument("--curve", choices=CURVES, help="tone curve after rescaling (default linear)")
    g.add_argument("--gamma", type=float, help="exponent of --curve gamma")
    g.add_argument("--log-gain", type=float, help="gain of --curve log (default 9)")
    g.add_argument("--threshold", type=float, help="threshold for --method value")
    g.add_argument("--units", choices=("rescaled", "raw"), help="units of --threshold (default rescaled)")
    g.add_argument("--nbins", type=int, help="histogram bins (default 256)")
    g.add_argument("--seed", type=int, help="seed of stochastic choices (default 0)")
    g.add_argument("--kernel", help="error-diffusion kernel for --method dither (default floyd-steinberg)")
    g.add_argument(
        "--serpentine", action="store_true", default=None, help="serpentine scan for --method dither"
    )
    g.add_argument("--jitter", type=float, help="threshold jitter amplitude in [0, 1] for --method dither")
    g.add_argument(
        "--upsample", type=float, nargs="+", metavar="F", help="upsample by F (or FX FY FZ) before dithering"
    )
    g.add_argument(
        "--matrix", type=int, help="threshold matrix size for --method ordered (power of 2, default 8)"
    )
    g.add_argument(
        "--pattern", choices=("bayer", "blue-noise"), help="ordered-dither pattern (default bayer)"
    )


_RECIPE_FIELDS = (
    "method",
    "scope",
    "axis",
    "rescale",
    "percentiles",
    "value_range",
    "curve",
    "gamma",
    "log_gain",
    "threshold",
    "units",
    "nbins",
    "seed",
    "kernel",
    "serpentine",
    "jitter",
    "upsample",
    "matrix",
    "pattern",
)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """Build the Recipe the flags ask for (a --recipe file first, then the flags over it)."""
    base: dict[str, Any] = {}
    if getattr(args, "recipe", None):
        path = Path(args.recipe)
        try:
            loaded = json.loads(path.read_text())
        except FileNotFoundError:
            raise _UsageError(f"{path}: no such recipe file") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise _UsageError(f"{path}: not a JSON recipe ({exc})") from None
        if isinstance(loaded, dict) and "steps" in loaded:  # a sidecar
            recipes = [s["recipe"] for s in loaded["steps"] if isinstance(s, dict) and "recipe" in s]
            if not recipes:
                raise _UsageError(f"{path}: sidecar holds no recipe")
            loaded = recipes[-1]
        base = dict(loaded)
    for name in _RECIPE_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            if name == "upsample":
                value = tuple(value) * 3 if len(value) == 1 else tuple(value)
            base[name] = tuple(value) if isinstance(value, list) else value
    if base.get("method") != "value" and "threshold" in base and base["threshold"] is None:
        del base["threshold"]
    return Recipe.from_dict(base)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number; got {text!r}")
    return value


def _volume_axis(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not -4 <= value <= 3:
        raise argparse.ArgumentTypeError(f"must be an axis of 4D data, -4..3; got {value}")
    return value


def _configure(args: argparse.Namespace) -> int | None:
    chunk_bytes = None
    if getattr(args, "chunk_mb", None):
        chunk_bytes = int(args.chunk_mb * 2**20)
    elif getattr(args, "memory_limit", None):
        chunk_bytes = chunk_bytes_for(args.memory_limit)
    return chunk_bytes


def cmd_binarize(args: argparse.Namespace) -> int:
    from .binarize import binarize_volume
    from .io import load, save
    from .progress import progress

    recipe = recipe_from_args(args)
    chunk_bytes = _configure(args)
    t0 = time.perf_counter()
    with progress("binarize", enabled=False if args.no_progress else None):
        vol = load(args.input, chunk_bytes=chunk_bytes, volume_axis=args.volume_axis)
        out = binarize_volume(vol, recipe)
        path = save(out, args.output, force=args.force, dtype=args.dtype)
        quality = None
        if recipe.method in ("stochastic", "dither", "ordered") and not args.no_quality:
            quality = _record_quality(path, args, chunk_bytes, recipe)
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
            f"{quality['ndim']}D), mean density error {quality['mean_density_error']:+.2e}"
        )
    return EXIT_OK


def _record_quality(
    path: Path, args: argparse.Namespace, chunk_bytes: int | None, recipe: Recipe
) -> dict[str, Any]:
    """Measure how well a dithered/stochastic output renders its input; store it in the sidecar."""
    from .io import update_sidecar
    from .quality import compare_with_input

    ndim = 2 if recipe.scope == "slice" else 3
    metrics = compare_with_input(
        path, args.input, sigma=1.0, ndim=ndim, chunk_bytes=chunk_bytes, volume_axis=args.volume_axis
    )
    update_sidecar(path, quality=metrics)
    return metrics


def cmd_info(args: argparse.Namespace) -> int:
    from .io import load
    from .progress import progress
    from .report import describe, format_description

    chunk_bytes = _configure(args)
    with progress("info", enabled=False if args.no_progress else None):
        vol = load(args.input, chunk_bytes=chunk_bytes, volume_axis=args.volume_axis)
        info = describe(vol)
        if getattr(args, "compare", None):
            from .quality import compare_with_input

            info["compare"] = compare_with_input(
                args.input,
                args.compare,
                sigma=args.sigma,
                ndim=args.blur_dims,
                chunk_bytes=chunk_bytes,
                volume_axis=args.volume_axis,
            )
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_description(info, str(args.input)))
        if "compare" in info:
            from .quality import format_comparison

            print(format_comparison(info["compare"]))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out_dir), shape=tuple(args.shape), n_volumes=args.volumes, seed=args.seed)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="volbin",
        description="Binary volumes from 3D/4D medical images (NIfTI, .npy, zarr): thresholds, "
        "stochastic binarization and dithering, streamed and reproducible.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            commands:
              volbin demo                         run the whole pipeline on a built-in phantom
              volbin info IN [--compare GREY]     geometry and statistics (and rendering error) of a volume
              volbin binarize IN OUT [options]    binarize a volume, write it with a JSON sidecar
              volbin batch INPUTS --out-dir DIR   binarize many volumes on a dask cluster, resumably
              volbin convert IN OUT               convert between NIfTI, .npy and zarr
              volbin export-slices IN OUT_DIR     dithered 1-bit PNG layers for a bitmap 3D printer
            'volbin COMMAND --help' shows each command's options and examples."""),
    )
    parser.add_argument("--version", action="version", version=f"volbin {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "binarize",
        help="binarize a volume",
        epilog=EPILOG_BINARIZE,
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
    _add_recipe_args(p)
    _add_common(p)
    p.set_defaults(func=cmd_binarize)

    p = sub.add_parser(
        "info",
        help="describe a volume",
        epilog=EPILOG_INFO,
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
        "--sigma", type=float, default=1.0, help="Gaussian blur of --compare in voxels (default 1)"
    )
    p.add_argument(
        "--blur-dims",
        type=int,
        choices=(2, 3),
        default=3,
        help="--compare blurs within slices (2) or volumetrically (3, default)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "demo",
        help="run the pipeline on a built-in phantom",
        epilog=EPILOG_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make an MRI-like phantom (3D and 4D) with ground truth, binarize it with "
        "Otsu, write NIfTI outputs and sidecars, and report thresholds, voxel counts and Dice.",
    )
    p.add_argument(
        "--out-dir", default="volbin-demo", help="folder for the demo's files (default ./volbin-demo)"
    )
    p.add_argument("--shape", type=int, nargs=3, default=(96, 112, 96), metavar=("X", "Y", "Z"))
    p.add_argument("--volumes", type=int, default=3, help="volumes in the 4D demo stack (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    from .batch import add_batch_commands

    add_batch_commands(sub)

    from .printer import add_export_command

    add_export_command(sub)
    return parser


def _show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    print(f"volbin: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Warnings about the data (`VolbinWarning`) are printed as one line each on stderr.
    """
    import warnings

    from .errors import VolbinWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", VolbinWarning)
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:  # accepted anywhere on the line, not only before the command
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        with dask.config.set(scheduler="threads"):
            return int(args.func(args))
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_OK
    except _UsageError as exc:
        if debug:
            raise
        print(f"volbin: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VolbinError as exc:
        if debug:
            raise
        msg = str(exc)
        src = getattr(args, "input", None) if "args" in locals() else None
        if src is not None and not isinstance(exc, VolbinFileError) and str(src) not in msg:
            msg = f"{src}: {msg}"
        print(f"volbin: error: {msg}", file=sys.stderr)
        return EXIT_DATA
    except (ValueError, TypeError) as exc:
        if debug:
            raise
        print(f"volbin: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("volbin: interrupted; no partial output was left under a final name", file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            raise
        print("volbin: error: out of memory; pass --memory-limit or a smaller --chunk-mb", file=sys.stderr)
        return EXIT_DATA
    except OSError as exc:
        if debug:
            raise
        print(f"volbin: error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except Exception as exc:  # a bug or an unforeseen input: still one line without --debug
        if debug:
            raise
        print(
            f"volbin: error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_DATA


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
