"""``volbin normalize IN OUT``: MRI intensity normalization, one volume or many on the batch engine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    EXIT_DATA,
    EXIT_OK,
    RECIPE_FLAGS,
    UsageError,
    add_common,
    add_output_limit,
    chunk_bytes,
    max_output_bytes,
    memory_config,
)

EPILOG = """\
examples:
  volbin normalize t1.nii.gz t1_z.nii.gz --method zscore --mask brainmask.nii.gz
  volbin normalize sub-02.nii.gz sub-02_m.nii.gz --method match --reference sub-01.nii.gz
  volbin normalize 'sub-*/anat/*_T1w.nii.gz' --out-dir norm/ --method nyul --save-landmarks nyul.json
  volbin normalize 'sub-*/anat/*_T1w.nii.gz' --out-dir norm/ --method nyul --save-landmarks nyul.json \\
      --fit-on 'sub-0[1-5]/anat/*_T1w.nii.gz'    # the scale from five subjects, applied to all
  volbin normalize new.nii.gz new_n.nii.gz --method nyul --landmarks nyul.json
  volbin normalize t1.nii.gz t1_ws.nii.gz --method whitestripe --contrast t1
  volbin normalize t1.nii.gz t1_n4.nii.gz --method n4 --mask brainmask.nii.gz   # needs volbin[itk]

Outputs are float32 with the input's header and a JSON sidecar holding the parameters
learnt (means, landmarks, the white stripe, the N4 settings).  Statistics are taken inside
--mask, by default the non-zero voxels.  N4 holds one volume in memory.  With --out-dir the
inputs run on the batch engine, as volbin batch: outputs up to date are skipped (re-run the
command after an interruption), a failing file is reported and the others go on, files run
in parallel on a dask cluster (--scheduler threads: in this process); exit code 1 if any
input failed.  For --method nyul without --landmarks the scale is fitted on the inputs (or
--fit-on) first and saved to --save-landmarks, which a re-run reuses while those files are
unchanged.  The same normalizations run inside volbin binarize (--normalize).
"""

#: The recipe fields of the normalizations' options (the method is --method here).
OPTIONS = (
    "reference",
    "reference_mask",
    "landmarks",
    "contrast",
    "tau",
    "bandwidth",
    "peak_fraction",
    "shrink_factor",
    "n_iterations",
    "convergence_threshold",
    "n_control_points",
    "spline_order",
    "bias_field_fwhm",
    "wiener_noise",
    "n_histogram_bins",
)
#: Flags of many inputs only (dest -> flag).
BATCH_ONLY = {
    "suffix": "--suffix",
    "ext": "--ext",
    "verify": "--verify",
    "keep_tree": "--keep-tree",
    "report": "--report",
    "workers": "--workers",
    "threads_per_worker": "--threads-per-worker",
    "scheduler": "--scheduler",
    "fit_on": "--fit-on",
}


def add_parser(sub: Any) -> None:
    from ..recipe import NORMALIZE_METHODS, NORMALIZE_OPTIONS
    from .batch import add_cluster_args, add_output_args

    assert set(OPTIONS) == {n for o in NORMALIZE_OPTIONS.values() for n in o}
    p = sub.add_parser(
        "normalize",
        help="normalize MRI intensities (z-score, matching, Nyul, WhiteStripe, N4)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Normalize IN to OUT (or every input into --out-dir), statistics inside a mask.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="IN OUT; or, with --out-dir, inputs: paths, quoted globs, list files, folders",
    )
    p.add_argument(
        "--out-dir", "-o", help="write <name>_norm<ext> for every input into this folder (the batch engine)"
    )
    p.add_argument("--method", choices=NORMALIZE_METHODS, required=True, help="the normalization")
    p.add_argument(
        "--mask",
        metavar="M",
        help="statistics inside this mask: a file on the input's grid, or 'nonzero' (default: the "
        "non-zero voxels)",
    )
    p.add_argument(
        "--scope", choices=("volume", "stack"), default="volume", help="parameters per volume (default)"
    )
    g = p.add_argument_group("options of the methods")
    for name in OPTIONS:
        flag, kw = RECIPE_FLAGS[name]
        kw = {**kw, "help": kw["help"].replace("--normalize ", "--method ")}
        g.add_argument(flag, **kw)
    g.add_argument(
        "--save-landmarks",
        metavar="JSON",
        help="write the Nyul scale fitted on the inputs (or --fit-on) to JSON, for --method nyul",
    )
    g.add_argument(
        "--fit-on",
        nargs="+",
        metavar="INPUT",
        help="--save-landmarks with --out-dir: fit the scale on these inputs (e.g. a subset) instead of all",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing outputs (and --save-landmarks)")
    add_output_args(p, "_norm")
    add_cluster_args(p)
    add_common(p)
    add_output_limit(p)
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The methods' options given on the line; one not used by --method is refused."""
    from ..recipe import unused_options

    given = {n: getattr(args, n) for n in OPTIONS if getattr(args, n) is not None}
    for name in ("n_iterations",):
        if name in given:
            given[name] = tuple(given[name])
    refused = unused_options({"normalize": args.method, **given}, list(given))
    if refused:
        raise UsageError(
            "; ".join(f"{RECIPE_FLAGS[n][0]} is not used by --method {args.method}" for n, _ in refused)
        )
    return given


def _check(args: argparse.Namespace) -> None:
    if args.method == "nyul" and (args.landmarks is None) == (args.save_landmarks is None):
        raise UsageError(
            "--method nyul needs --landmarks JSON (a saved scale) or --save-landmarks JSON (fit one)"
        )
    if args.save_landmarks is not None and args.method != "nyul":
        raise UsageError(f"--save-landmarks is not used by --method {args.method}")
    if args.fit_on is not None and args.save_landmarks is None:
        raise UsageError(
            "--fit-on is used with --save-landmarks (it chooses the files the scale is fitted on)"
        )
    if args.out_dir is None:
        defaults = {"suffix": "_norm", "retries": 1}
        for dest, flag in BATCH_ONLY.items():
            if getattr(args, dest) not in (None, False, defaults.get(dest)):
                raise UsageError(f"{flag} is used with --out-dir (many inputs)")
        if len(args.inputs) != 2:
            raise UsageError("give IN OUT, or inputs and --out-dir DIR")


def _recipe(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    from ..recipe import Recipe
    from ._common import _flag_names

    try:
        return Recipe(normalize=args.method, scope=args.scope, mask=args.mask, **options)
    except ValueError as exc:
        raise UsageError(_flag_names(str(exc)).replace("--normalize ", "--method ")) from None


def run(args: argparse.Namespace) -> int:
    from ..progress import progress

    options = _options(args)
    _check(args)
    cb = chunk_bytes(args)
    with memory_config(args), progress("normalize", enabled=False if args.no_progress else None):
        if args.out_dir is not None:
            return _many(args, options, cb)
        return _one(args, options, cb)


def _one(args: argparse.Namespace, options: dict[str, Any], cb: int | None) -> int:
    from ..batch.normalizing import _fitted_on, _saved_landmarks, fit_landmarks, normalization_doc
    from ..intensity import normalized
    from ..io import load, save, write_json
    from ..masks import recipe_mask

    src, dst = args.inputs
    if args.save_landmarks:
        mask = args.mask if args.mask in (None, "nonzero") else str(Path(args.mask).absolute())
        fitted = _fitted_on([src], mask)
        try:
            landmarks = _saved_landmarks(str(Path(args.save_landmarks).absolute()), fitted, args.force)
        except ValueError as exc:
            raise UsageError(str(exc).replace("force=True (CLI: --force)", "--force")) from None
        if landmarks is None:
            landmarks = fit_landmarks([src], mask, chunk_bytes=cb, volume_axis=args.volume_axis).to_dict()
            write_json({**landmarks, "fitted_on": fitted}, args.save_landmarks)
            print(f"wrote {args.save_landmarks} (Nyul landmarks from {landmarks['n_volumes']} volume(s))")
        options = {**options, "landmarks": landmarks}
    rec = _recipe(args, options)
    vol = load(src, chunk_bytes=cb, volume_axis=args.volume_axis, allow_missing=args.allow_missing_chunks)
    out = normalized(vol, rec, recipe_mask(rec, vol), record={"recipe": normalization_doc(rec)})
    path = save(out, dst, force=args.force, dtype="float32", max_output_bytes=max_output_bytes(args))
    print(f"wrote {path} ({args.method})")
    return EXIT_OK


def _many(args: argparse.Namespace, options: dict[str, Any], cb: int | None) -> int:
    from ..batch.engine import _use_scratch, runs_here
    from ..batch.normalizing import normalize

    if args.method == "nyul" and "landmarks" not in options:
        _recipe(args, {**options, "landmarks": _PLACEHOLDER})  # the flags checked before the fit
    else:
        _recipe(args, options)
    if runs_here(None, args.scheduler, args.workers, args.threads_per_worker):
        _use_scratch()  # this process reads the inputs; it exits when the batch ends
    try:
        res = normalize(
            args.inputs,
            args.method,
            mask=args.mask,
            scope=args.scope,
            volume_axis=args.volume_axis,
            out_dir=args.out_dir,
            save_landmarks=args.save_landmarks,
            fit_on=args.fit_on,
            suffix=args.suffix,
            ext=args.ext,
            force=args.force,
            keep_tree=args.keep_tree,
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            memory_limit=args.memory_limit,
            scheduler=args.scheduler,
            chunk_bytes=cb if args.chunk_mb else None,
            retries=args.retries,
            progress="log" if args.no_progress else None,
            report=args.report,
            verify=args.verify,
            allow_missing=args.allow_missing_chunks,
            max_output_bytes=max_output_bytes(args),
            **options,
        )
    except ValueError as exc:
        raise UsageError(str(exc).replace("pass force=True (CLI: --force)", "pass --force")) from None
    if args.save_landmarks:
        print(f"Nyul landmarks: {args.save_landmarks}")
    print(res.summary())
    return EXIT_OK if res.ok else EXIT_DATA


#: A stand-in scale, to check the other flags before the scale is fitted.
_PLACEHOLDER = {"percentiles": [0.0, 100.0], "standard_scale": [0.0, 100.0]}
