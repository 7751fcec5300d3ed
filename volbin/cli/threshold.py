"""``volbin threshold IN``: every histogram threshold method side by side, from one pass."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import (
    EXIT_OK,
    UsageError,
    add_common,
    add_recipe_args,
    chunk_bytes,
    memory_config,
    recipe_from_args,
)

EPILOG = """\
examples:
  volbin threshold t1.nii.gz
  volbin threshold t1.nii.gz --mask brain_mask.nii.gz          # statistics and counts inside the brain
  volbin threshold t1.nii.gz --stats-mask nonzero --percentile 95
  volbin threshold bold.nii.gz --scope slice --json > thresholds.json
  volbin threshold t1.nii.gz --methods otsu li triangle
  volbin threshold t1.nii.gz --normalize zscore --mask brain_mask.nii.gz   # thresholds as z-scores
  volbin threshold t1.nii.gz --curve clahe --kernel-mm 20   # on the CLAHE output (rescaled units)

Each method's threshold is given in raw and rescaled units with the foreground it selects
(voxels and fraction; x > threshold, or x >= threshold with --inclusive), per group, or as
min/median/max over groups when there are more than 8.  Every method reads the same
histogram: the data are read once for the range, once for the histogram and once to count
the foreground of every threshold.  A method that cannot decide says why.  With --normalize
the thresholds are in normalized units (and rescaled), with --curve clahe in rescaled units.
"""

#: The recipe flags this command takes (a method's own flags aside).
FIELDS = ("scope", "axis", "rescale", "percentiles", "value_range", "nbins", "percentile", "inclusive")
FIELDS_MASK = ("mask", "stats_mask")
#: The intensity stage before the decision: the tone curve and the normalisation.
FIELDS_CURVE = ("curve", "gamma", "log_gain", "gain", "cutoff", "clip_limit", "kernel_size", "kernel_mm")


def add_parser(sub: Any) -> None:
    from ..recipe import HISTOGRAM_METHODS, NORMALIZE_FIELDS

    p = sub.add_parser(
        "threshold",
        help="every histogram threshold method side by side",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Thresholds of every histogram method on IN (raw and rescaled units) and the "
        "foreground each selects, per group, from one shared histogram pass.",
    )
    p.add_argument("input", help="input volume")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=HISTOGRAM_METHODS,
        metavar="METHOD",
        help=f"the methods to compare (default: all of {', '.join(HISTOGRAM_METHODS)})",
    )
    add_recipe_args(p, FIELDS + FIELDS_MASK + FIELDS_CURVE + NORMALIZE_FIELDS, title="statistics")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import load
    from ..progress import progress
    from ..recipe import NORMALIZE_FIELDS, Recipe
    from ..survey import format_survey, survey

    if getattr(args, "recipe", None):
        raise UsageError("--recipe is not used by volbin threshold (it compares every method)")
    recipe = recipe_from_args(args, method="otsu") if args.percentile is None else None
    if args.percentile is not None:
        recipe = recipe_from_args(args, method="percentile")
    assert recipe is not None
    if recipe.scope == "cohort":
        raise UsageError(
            "--scope cohort pools a batch's inputs (volbin batch); here give stack, volume or slice"
        )
    options: dict[str, Any] = {
        "percentiles": recipe.percentiles,
        "value_range": recipe.value_range,
    }
    options = {k: v for k, v in options.items() if k != "percentiles" or recipe.rescale == "percentile"}
    if recipe.rescale != "fixed":
        options.pop("value_range")
    defaults = Recipe()
    for name in FIELDS_CURVE + NORMALIZE_FIELDS:
        if getattr(recipe, name) != getattr(defaults, name):
            options[name] = getattr(recipe, name)
    with memory_config(args), progress("threshold", enabled=False if args.no_progress else None):
        vol = load(args.input, chunk_bytes=chunk_bytes(args), volume_axis=args.volume_axis)
        result = survey(
            vol,
            args.methods,
            scope=recipe.scope,
            axis=recipe.axis,
            nbins=recipe.nbins,
            rescale=recipe.rescale,
            percentile=recipe.percentile,
            inclusive=recipe.inclusive,
            mask=recipe.mask,
            stats_mask=recipe.stats_mask,
            **options,
        )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_survey(result, str(args.input)))
    return EXIT_OK
