"""What every command shares: the parser class, exit codes, option types, the recipe flags.

Option types validate at parse time (type, finiteness, range), so a bad value is a usage
error (exit 2) naming the flag before any file is opened.  The recipe flags are derived from
the `Recipe` dataclass; a flag the chosen method does not use is refused here, with the
same rule `Recipe` applies to the API (`Recipe.check_used`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..recipe import (
    CURVES,
    FILL_HOLES,
    HYSTERESIS_METHODS,
    LOCAL_METHODS,
    METHODS,
    NORMALIZE_METHODS,
    RADIUS_UNITS,
    RESCALE_METHODS,
    SCOPES,
    UNITS,
    Recipe,
    unused_options,
)

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake on the command line: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise `UsageError` and suggest the closest flag."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(message + self._suggestion(message))

    def _known_flags(self) -> set[str]:
        """This parser's long flags and its subcommands' (argparse reports unknown flags of a
        subcommand from the top-level parser)."""
        flags = {s for a in self._actions for s in a.option_strings if s.startswith("--")}
        for a in self._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub in a.choices.values():
                    flags |= sub._known_flags() if isinstance(sub, Parser) else set()
        return flags

    def _suggestion(self, message: str) -> str:
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        known = sorted(self._known_flags())
        hints = []
        for arg in message[len(prefix) :].split():
            flag = arg.split("=", 1)[0]
            if flag.startswith("-"):
                # A flag of another command is no typo: suggest only other spellings.
                close = difflib.get_close_matches(flag, [k for k in known if k != flag], n=1, cutoff=0.6)
                if close:
                    hints.append(f"did you mean {close[0]} (not {flag})?")
        return ("; " + "; ".join(hints)) if hints else ""


# --- option types: each validates type, finiteness and range at parse time -------------------
def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"not {'an integer' if kind is int else 'a number'}: {text!r}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got {text!r}")
    return value


def float_in(
    lo: float | None = None, hi: float | None = None, *, open_lo: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite float in [lo, hi] (or (lo, hi] with `open_lo`)."""

    def parse(text: str) -> float:
        value = _number(text, float)
        bad_lo = lo is not None and (value <= lo if open_lo else value < lo)
        if bad_lo or (hi is not None and value > hi):
            left = "(" if open_lo else "["
            span = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
            raise argparse.ArgumentTypeError(f"must be a number in {span}; got {text!r}")
        return value

    return parse


def int_in(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            raise argparse.ArgumentTypeError(f"must be an integer in {span}; got {text!r}")
        return value

    return parse


_MEMORY_UNITS = {
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


def parse_memory(text: str) -> int:
    """A memory size such as ``4GB`` or ``512MiB``, in bytes (16 MiB to 1 PiB)."""
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    unit = t[len(num) :]
    try:
        value = float(num)
    except ValueError:
        value = math.nan
    if unit not in _MEMORY_UNITS or not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (e.g. 4GB, 512MiB)")
    size = value * _MEMORY_UNITS[unit]
    if not 16 * 2**20 <= size <= 2**50:
        raise argparse.ArgumentTypeError(f"memory size must lie between 16MiB and 1PiB; got {text!r}")
    return int(size)


def volume_axis(text: str) -> int:
    value = int(_number(text, int))
    if not -4 <= value <= 3:
        raise argparse.ArgumentTypeError(f"must be an axis of 4D data, -4..3; got {value}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a float that is not NaN (±inf allowed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be a number, not NaN; got {text!r}")
    return value


_SCHEME = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:(\d{1,5}))?/?$")


def scheduler_address(text: str) -> str:
    """An argparse type: ``threads`` or a dask scheduler address (``tcp://host:8786``)."""
    t = text.strip()
    if t == "threads":
        return t
    m = _SCHEME.match(t)
    rest = t[m.end() :] if m else t
    if m and m.group(1) == "inproc" and rest and not any(c.isspace() for c in rest):
        return t  # inproc://<host>/<pid>/<n>: a scheduler in this process
    hp = _HOST_PORT.match(rest)
    port = hp.group(3) if hp else None
    if hp is None or (m is None and port is None) or (port is not None and not 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(
            f"not a scheduler address: {text!r} (e.g. tcp://host:8786, host:8786, or 'threads')"
        )
    return t


def max_output_gb(text: str) -> int:
    """An argparse type: a size in GB (10^9 bytes), 0.001 to 10^6, as bytes."""
    return int(float_in(1e-3, 1e6)(text) * 1e9)


def add_output_limit(p: argparse.ArgumentParser) -> None:
    """``--max-output-gb``: the largest output a command writes."""
    p.add_argument(
        "--max-output-gb",
        type=max_output_gb,
        default=None,
        metavar="GB",
        help="refuse to write an output larger than GB, uncompressed (default 17.2, i.e. 16 GiB)",
    )


def max_output_bytes(args: argparse.Namespace) -> int:
    from ..io import MAX_OUTPUT_BYTES

    given = getattr(args, "max_output_gb", None)
    return MAX_OUTPUT_BYTES if given is None else int(given)


#: Chunk sizes volbin accepts: below 1 KiB the graph overhead dominates, above 16 GiB one
#: chunk no longer fits a machine.
chunk_mb = float_in(1 / 1024, 16 * 1024)


def add_common(p: argparse.ArgumentParser) -> None:
    """Options of every command that reads volumes."""
    p.add_argument(
        "--volume-axis",
        type=volume_axis,
        default=None,
        metavar="N",
        help="axis of 4D input that indexes volumes (NIfTI: 3; np.stack-ed .npy: 0)",
    )
    p.add_argument(
        "--memory-limit",
        type=parse_memory,
        default=None,
        metavar="SIZE",
        help="keep peak memory under SIZE (e.g. 4GB) by choosing chunk sizes",
    )
    p.add_argument(
        "--chunk-mb",
        type=chunk_mb,
        default=None,
        metavar="MB",
        help="input chunk size in MiB, 0.001 to 16384 (default 32; overrides --memory-limit)",
    )
    p.add_argument(
        "--allow-missing-chunks",
        action="store_true",
        help="zarr input: read chunks missing from the store as its fill value (with a warning)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def memory_config(args: argparse.Namespace) -> Any:
    """A context in which ``--memory-limit`` also bounds the whole volumes CLAHE holds."""
    import contextlib

    limit = getattr(args, "memory_limit", None)
    if not limit:
        return contextlib.nullcontext()
    import dask

    from ..rescale import CLAHE_MEMORY_KEY

    return dask.config.set({CLAHE_MEMORY_KEY: int(limit)})


def chunk_bytes(args: argparse.Namespace) -> int | None:
    """The chunk size the flags ask for: --chunk-mb, else from --memory-limit, else None."""
    from ..volume import chunk_bytes_for

    if getattr(args, "chunk_mb", None):
        return int(args.chunk_mb * 2**20)
    if getattr(args, "memory_limit", None):
        return chunk_bytes_for(args.memory_limit)
    return None


# --- the recipe flags ----------------------------------------------------------------------------
#: Recipe fields -> (flag, argparse keywords).  Every field of `Recipe` but `extra` has a flag.
def _recipe_flags() -> dict[str, tuple[str, dict[str, Any]]]:
    d = Recipe()
    return {
        "method": ("--method", {"choices": METHODS, "help": f"how to binarize (default {d.method})"}),
        "scope": (
            "--scope",
            {
                "choices": SCOPES,
                "help": f"one decision per stack, volume or slice, or one pooled over a batch's inputs "
                f"(cohort) (default {d.scope})",
            },
        ),
        "axis": ("--axis", {"choices": ("x", "y", "z"), "help": "slice axis for --scope slice (default z)"}),
        "normalize": (
            "--normalize",
            {
                "choices": NORMALIZE_METHODS,
                "help": "normalize MRI intensities first, with statistics inside --mask or --stats-mask "
                "(default: the non-zero voxels): zscore, match (--reference), nyul (--landmarks), "
                "whitestripe, n4 (holds one volume in memory; needs SimpleITK); thresholds then in "
                "--units normalized or rescaled",
            },
        ),
        "reference": (
            "--reference",
            {"metavar": "R", "help": "--normalize match: the volume whose histogram to match"},
        ),
        "reference_mask": (
            "--reference-mask",
            {
                "metavar": "M",
                "help": "--normalize match: where the reference's histogram is taken (default its "
                "non-zero voxels)",
            },
        ),
        "landmarks": (
            "--landmarks",
            {
                "metavar": "JSON",
                "help": "--normalize nyul: the standard scale written by volbin normalize --save-landmarks",
            },
        ),
        "contrast": (
            "--contrast",
            {"choices": ("t1", "t2"), "help": "--normalize whitestripe: the contrast (default t1)"},
        ),
        "tau": (
            "--tau",
            {
                "type": float_in(0, 0.5, open_lo=True),
                "help": "--normalize whitestripe: half-width of the stripe in quantiles, below 0.5 "
                "(default 0.05)",
            },
        ),
        "bandwidth": (
            "--bandwidth",
            {
                "type": float_in(0, None, open_lo=True),
                "help": "--normalize whitestripe: Gaussian smoothing of the histogram, intensity units "
                "(default range / 80)",
            },
        ),
        "peak_fraction": (
            "--peak-fraction",
            {
                "type": float_in(0, 1, open_lo=True),
                "help": "--normalize whitestripe: smallest T1 peak height, as a fraction of the highest "
                "(default 0.2)",
            },
        ),
        "shrink_factor": (
            "--shrink-factor",
            {
                "type": int_in(1, 64),
                "metavar": "N",
                "help": "--normalize n4: fit on a copy shrunk by N (default 4)",
            },
        ),
        "n_iterations": (
            "--n-iterations",
            {
                "type": int_in(1, 10**6),
                "nargs": "+",
                "metavar": "N",
                "help": "--normalize n4: iterations per fitting level (default 50 50 50 50)",
            },
        ),
        "convergence_threshold": (
            "--convergence-threshold",
            {"type": float_in(0), "help": "--normalize n4: convergence threshold (default 0.001)"},
        ),
        "n_control_points": (
            "--n-control-points",
            {
                "type": int_in(2, 10**4),
                "metavar": "N",
                "help": "--normalize n4: spline control points (default 4)",
            },
        ),
        "spline_order": (
            "--spline-order",
            {"type": int_in(1, 10), "metavar": "N", "help": "--normalize n4: B-spline order (default 3)"},
        ),
        "bias_field_fwhm": (
            "--bias-field-fwhm",
            {
                "type": float_in(0, None, open_lo=True),
                "help": "--normalize n4: FWHM of the bias field's Gaussian (default 0.15)",
            },
        ),
        "wiener_noise": (
            "--wiener-noise",
            {
                "type": float_in(0, None, open_lo=True),
                "help": "--normalize n4: Wiener filter noise (default 0.01)",
            },
        ),
        "n_histogram_bins": (
            "--n-histogram-bins",
            {
                "type": int_in(2, 2**16),
                "metavar": "N",
                "help": "--normalize n4: histogram bins (default 200)",
            },
        ),
        "rescale": (
            "--rescale",
            {"choices": RESCALE_METHODS, "help": f"intensity rescale (default {d.rescale})"},
        ),
        "percentiles": (
            "--percentiles",
            {
                "type": float_in(0, 100),
                "nargs": 2,
                "metavar": ("LO", "HI"),
                "help": "percentiles for --rescale percentile (default 1 99)",
            },
        ),
        "value_range": (
            "--range",
            {
                "type": float_in(),
                "nargs": 2,
                "metavar": ("LO", "HI"),
                "help": "raw range for --rescale fixed",
            },
        ),
        "curve": (
            "--curve",
            {
                "choices": CURVES,
                "help": "tone curve after rescaling (default linear); clahe equalises each whole 3D volume "
                "and holds it in memory (about 76 bytes per voxel; refused above --memory-limit), "
                "its thresholds in rescaled units only",
            },
        ),
        "gamma": ("--gamma", {"type": float_in(0, 100, open_lo=True), "help": "exponent of --curve gamma"}),
        "log_gain": (
            "--log-gain",
            {"type": float_in(0, 1e6, open_lo=True), "help": "gain of --curve log (default 9)"},
        ),
        "gain": (
            "--gain",
            {"type": float_in(0, 1e6, open_lo=True), "help": "gain of --curve sigmoid (default 10)"},
        ),
        "cutoff": (
            "--cutoff",
            {"type": float_in(), "help": "cutoff of --curve sigmoid, in [0, 1] units (default 0.5)"},
        ),
        "clip_limit": (
            "--clip-limit",
            {"type": float_in(0, 1, open_lo=True), "help": "clip limit of --curve clahe (default 0.01)"},
        ),
        "kernel_size": (
            "--kernel-size",
            {
                "type": int_in(1),
                "nargs": "+",
                "metavar": "N",
                "help": "region of --curve clahe in voxels, N or NX NY NZ (default 1/8 of each size)",
            },
        ),
        "kernel_mm": (
            "--kernel-mm",
            {
                "type": float_in(0, 1e6, open_lo=True),
                "nargs": "+",
                "metavar": "MM",
                "help": "region of --curve clahe in mm, MM or MX MY MZ (uses the voxel sizes)",
            },
        ),
        "threshold": (
            "--threshold",
            {"type": finite_float, "help": "threshold for --method value, in --units"},
        ),
        "percentile": (
            "--percentile",
            {"type": float_in(0, 100), "metavar": "P", "help": "percentile (0-100) for --method percentile"},
        ),
        "units": (
            "--units",
            {
                "choices": UNITS,
                "help": "units of --threshold, --upper, --low and --high: rescaled (default, [0, 1] after "
                "rescaling), raw, or normalized (the values --normalize makes, e.g. z-scores)",
            },
        ),
        "upper": (
            "--upper",
            {
                "type": float_in(),
                "metavar": "U",
                "help": "upper bound: foreground is threshold < x <= U, in --units (any threshold method)",
            },
        ),
        "inclusive": (
            "--inclusive",
            {
                "action": "store_true",
                "default": None,
                "help": "foreground is x >= threshold, as fslmaths -thr and nilearn keep "
                "(default: x > threshold)",
            },
        ),
        "invert": (
            "--invert",
            {
                "action": "store_true",
                "default": None,
                "help": "write the complement of the foreground (inside the mask, with --mask)",
            },
        ),
        "mask": (
            "--mask",
            {
                "metavar": "M",
                "help": "compute statistics inside mask M and write 0 outside it; M is a NIfTI/.npy/"
                "zarr file on the input's grid (non-zero inside) or 'nonzero' (the input's non-zero voxels)",
            },
        ),
        "stats_mask": (
            "--stats-mask",
            {
                "metavar": "M",
                "help": "compute statistics inside mask M, apply the thresholds everywhere (M as for --mask)",
            },
        ),
        "threshold_from": (
            "--threshold-from",
            {
                "metavar": "SIDECAR",
                "help": "apply the raw thresholds recorded in an earlier output's sidecar .json "
                "(same scope and number of groups; its method unless --method is given)",
            },
        ),
        "nbins": ("--nbins", {"type": int_in(2, 2**24), "help": "histogram bins (default 256)"}),
        "seed": (
            "--seed",
            {"type": int_in(0, 2**64 - 1), "help": "seed of stochastic choices, 0..2^64-1 (default 0)"},
        ),
        "kernel": (
            "--kernel",
            {
                "help": "error-diffusion kernel for --method dither (default floyd-steinberg with "
                "--scope slice, sierra-lite-3d otherwise)"
            },
        ),
        "serpentine": (
            "--serpentine",
            {
                "action": "store_true",
                "default": None,
                "help": "serpentine scan for --method dither (default: on through volumes, off per slice)",
            },
        ),
        "jitter": (
            "--jitter",
            {"type": float_in(0, 1), "help": "threshold jitter amplitude in [0, 1] for --method dither"},
        ),
        "upsample": (
            "--upsample",
            {
                "type": float_in(1, 64),
                "nargs": "+",
                "metavar": "F",
                "help": "upsample by F (or FX FY FZ), 1 to 64, before dithering",
            },
        ),
        "matrix": (
            "--matrix",
            {
                "type": int_in(2, 256),
                "help": "threshold matrix size for --method ordered (power of 2, default 8)",
            },
        ),
        "pattern": (
            "--pattern",
            {"choices": ("bayer", "blue-noise"), "help": "ordered-dither pattern (default bayer)"},
        ),
        "local_method": (
            "--local",
            {
                "choices": LOCAL_METHODS,
                "help": f"local threshold of --method local (default {d.local_method})",
            },
        ),
        "block_size": (
            "--block-size",
            {
                "type": int_in(1, 10**6),
                "metavar": "N",
                "help": "odd window size in voxels of --method local "
                f"(default {d.block_size}; 2D windows with --scope slice)",
            },
        ),
        "offset": (
            "--offset",
            {
                "type": float_in(),
                "help": "subtracted from --local gaussian/mean/median thresholds (default 0)",
            },
        ),
        "k": (
            "--k",
            {"type": float_in(), "help": f"--local niblack/sauvola weight of the std (default {d.k})"},
        ),
        "r": (
            "--r",
            {
                "type": float_in(0, None, open_lo=True),
                "help": "--local sauvola dynamic range of the std (default 1)",
            },
        ),
        "low": (
            "--low",
            {"type": float_in(), "metavar": "L", "help": "low threshold of --method hysteresis, in --units"},
        ),
        "high": (
            "--high",
            {"type": float_in(), "metavar": "H", "help": "high threshold of --method hysteresis, in --units"},
        ),
        "low_method": (
            "--low-method",
            {
                "choices": HYSTERESIS_METHODS,
                "metavar": "M",
                "help": "histogram method deciding --low (e.g. li)",
            },
        ),
        "high_method": (
            "--high-method",
            {
                "choices": HYSTERESIS_METHODS,
                "metavar": "M",
                "help": "histogram method deciding --high (e.g. otsu)",
            },
        ),
        "connectivity": (
            "--connectivity",
            {
                "type": int_in(1, 3),
                "help": "neighbourhood 1, 2 or 3 of hysteresis and clean-up components (default 1)",
            },
        ),
        "keep_largest": (
            "--keep-largest",
            {"action": "store_true", "default": None, "help": "keep the largest component of each volume"},
        ),
        "min_size": (
            "--min-size",
            {"type": int_in(0), "metavar": "N", "help": "remove components of fewer than N voxels"},
        ),
        "fill_holes": (
            "--fill-holes",
            {
                "nargs": "?",
                "const": "3d",
                "choices": FILL_HOLES,
                "help": "fill holes in 3D (default) or in each 2D slice along --axis",
            },
        ),
        "opening": (
            "--opening",
            {
                "type": float_in(0, 1e6),
                "metavar": "R",
                "help": "binary opening by a ball of radius R (--radius-units)",
            },
        ),
        "closing": (
            "--closing",
            {
                "type": float_in(0, 1e6),
                "metavar": "R",
                "help": "binary closing by a ball of radius R (--radius-units)",
            },
        ),
        "radius_units": (
            "--radius-units",
            {"choices": RADIUS_UNITS, "help": "units of --opening and --closing radii (default voxels)"},
        ),
    }


RECIPE_FLAGS = _recipe_flags()
assert set(RECIPE_FLAGS) == {f.name for f in dataclasses.fields(Recipe)} - {"extra"}, (
    "a Recipe field lacks a flag"
)


def add_recipe_args(
    p: argparse.ArgumentParser, fields: tuple[str, ...] | None = None, title: str = "recipe"
) -> None:
    """Add ``--recipe`` and the flags of `fields` (default: every Recipe field)."""
    g = p.add_argument_group(title)
    g.add_argument(
        "--recipe",
        metavar="JSON",
        help="a recipe as JSON, or a sidecar .json whose recipe to reuse; flags given too override "
        "its fields (fields of the file the final method does not use are dropped)",
    )
    for name in fields or tuple(RECIPE_FLAGS):
        flag, kw = RECIPE_FLAGS[name]
        dest: dict[str, Any] = {"dest": name} if flag[2:].replace("-", "_") != name else {}
        g.add_argument(flag, **dest, **kw)


def read_recipe_file(path: Path) -> dict[str, Any]:
    """The recipe of a JSON file: a recipe object, or a sidecar (its last step's recipe)."""
    from ..io import last_recipe

    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a JSON recipe ({exc})") from None
    if not isinstance(loaded, dict):
        raise UsageError(
            f"{path}: not a recipe (a JSON object is needed; got a JSON {type(loaded).__name__})"
        )
    if "steps" in loaded:  # a sidecar
        recipe = last_recipe(loaded)
        if recipe is None:
            raise UsageError(f"{path}: sidecar holds no recipe")
        return dict(recipe)
    return loaded


def recipe_from_args(args: argparse.Namespace, **fixed: Any) -> Recipe:
    """The Recipe the flags ask for: a --recipe file first, then the flags over it.

    `fixed` sets fields the command decides (``method="dither"`` for export-slices).  Fields
    that came from the file and that the final method does not use are reset to their
    defaults; a flag given on the line that the method does not use is a usage error.
    """
    base: dict[str, Any] = {}
    if getattr(args, "recipe", None):
        base = read_recipe_file(Path(args.recipe))
    given: dict[str, Any] = {}
    for name in RECIPE_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            if name == "upsample":
                value = tuple(value) * 3 if len(value) == 1 else tuple(value)
            given[name] = tuple(value) if isinstance(value, list) else value
    merged = {**base, **given, **fixed}
    if given.get("threshold_from") is not None and "method" not in given and "method" not in fixed:
        from ..binarize import sidecar_method
        from ..errors import VolbinError

        try:  # the thresholds' own method, unless --method says otherwise
            merged["method"] = sidecar_method(given["threshold_from"])
        except VolbinError as exc:
            raise UsageError(f"--threshold-from: {exc}") from None
    for name, _ in unused_options(merged, tuple(base)):
        if name not in given and name not in fixed:
            del merged[name]  # from the file, for another method
    if merged.get("curve") == "gamma" and "gamma" not in merged:
        raise UsageError("--curve gamma needs --gamma G (the exponent; 1 would change nothing)")
    refused = [(n, why) for n, why in unused_options(merged, tuple(given)) if n not in fixed]
    if refused:
        raise UsageError(
            "; ".join(f"{RECIPE_FLAGS[n][0]} is not used by {_flag_names(why)}" for n, why in refused)
        )
    try:
        return Recipe.from_dict(merged)
    except ValueError as exc:
        raise UsageError(_flag_names(str(exc))) from None


def _flag_names(message: str) -> str:
    """A Recipe message speaks of fields (`value_range`); on the command line name the flags."""
    for name, (flag, _) in RECIPE_FLAGS.items():
        message = re.sub(rf"\b{name}='([^']*)'", rf"{flag} \1", message)
        message = message.replace(f"`{name}`", flag)
        message = re.sub(rf"(?<![\w-]){name}=", f"{flag} ", message)  # not `mask=` for `k`
    return message
