"""``volbin batch INPUTS --out-dir DIR``: many volumes, on a dask cluster, resumably."""

from __future__ import annotations

import argparse
from typing import Any

from ..formats import IMAGE_EXTS
from ._common import (
    EXIT_DATA,
    EXIT_OK,
    add_common,
    add_output_limit,
    add_recipe_args,
    chunk_bytes,
    int_in,
    max_output_bytes,
    recipe_from_args,
    scheduler_address,
)

EPILOG = """\
examples:
  volbin batch 'data/sub-*/anat/*_T1w.nii.gz' --out-dir masks/ --method otsu --scope volume
  volbin batch inputs.txt --out-dir masks/ --recipe recipe.json --workers 2 --memory-limit 4GB
  volbin batch data/ --out-dir masks/ --scheduler tcp://scheduler-host:8786
  volbin batch 'site*/*.nii.gz' --out-dir masks/ --keep-tree --ext .zarr
  volbin batch 'sub-*/anat/*_T1w.nii.gz' --out-dir masks/ --preview   # then open masks/index.html

Outputs whose sidecar matches the recipe and the input are skipped: re-run the same command
after an interruption to finish the rest.  OUT_DIR/index.html (always written; with --preview
it shows each mask over its input) has one row per input: thresholds, foreground volume,
status and error.  Exit code 1 if any input failed.
"""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "batch",
        help="binarize many volumes on a dask cluster, resumably",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Binarize every input (globs, a list file, a folder, paths) into --out-dir, "
        "one output and JSON sidecar per input, files in parallel: in this process on machines of "
        "up to 2 cores, else on a dask.distributed cluster.",
    )
    p.add_argument("inputs", nargs="+", help="globs (quote them), list files, folders or paths")
    p.add_argument("--out-dir", "-o", required=True, help="output folder (created if missing)")
    add_output_args(p, "_mask")
    p.add_argument(
        "--preview",
        action="store_true",
        help="also write a preview PNG beside each output (its name with .png: the input's slices "
        "with the mask over them and the histogram with the thresholds; named in the sidecar) "
        "and show it in the HTML index",
    )
    p.add_argument(
        "--index",
        metavar="PATH",
        help="write the HTML index there (default: index.html in OUT_DIR; relative links, "
        "nothing from the network)",
    )
    p.add_argument("--force", action="store_true", help="redo outputs that are up to date")
    add_cluster_args(p)
    add_recipe_args(p)
    add_common(p)
    add_output_limit(p)
    p.set_defaults(func=run)


def add_output_args(p: argparse.ArgumentParser, suffix: str) -> None:
    """The options of a batch's outputs: names, format, resume checks, report."""
    p.add_argument("--suffix", default=suffix, help=f"added before the extension (default {suffix})")
    p.add_argument("--ext", choices=IMAGE_EXTS, help="output format (default: the input's)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="hash every existing output against its sidecar before skipping it (default: "
        "outputs up to 64 MiB; sizes are always compared)",
    )
    p.add_argument(
        "--keep-tree",
        action="store_true",
        help="mirror the inputs' folders in --out-dir (needed when names repeat)",
    )
    p.add_argument(
        "--report", metavar="PATH", help="JSON run report (default: volbin-batch-report.json in OUT_DIR)"
    )


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """Where a batch runs: a local cluster, a scheduler, or this process."""
    g = p.add_argument_group("cluster")
    g.add_argument("--workers", type=int_in(1, 256), metavar="N", help="local cluster: worker processes")
    g.add_argument(
        "--threads-per-worker",
        type=int_in(1, 256),
        metavar="N",
        help="local cluster: threads per worker (default: workers x threads = cores)",
    )
    g.add_argument(
        "--scheduler",
        type=scheduler_address,
        metavar="ADDRESS",
        help="join a running dask scheduler (tcp://host:8786), or 'threads' to run "
        "in this process without a cluster, one file per core (the default on up to 2 cores)",
    )
    g.add_argument("--retries", type=int_in(0, 100), default=1, help="retries of a task that errors (1)")


def run(args: argparse.Namespace) -> int:
    from ..batch import batch
    from ..batch.engine import _use_scratch, runs_here

    recipe = recipe_from_args(args)
    if runs_here(None, args.scheduler, args.workers, args.threads_per_worker):
        _use_scratch()  # this process reads the inputs; it exits when the batch ends
    res = batch(
        args.inputs,
        args.out_dir,
        recipe,
        suffix=args.suffix,
        ext=args.ext,
        force=args.force,
        keep_tree=args.keep_tree,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
        scheduler=args.scheduler,
        chunk_bytes=chunk_bytes(args) if args.chunk_mb else None,
        volume_axis=args.volume_axis,
        retries=args.retries,
        progress="log" if args.no_progress else None,
        report=args.report,
        preview=args.preview,
        index=args.index,
        verify=args.verify,
        allow_missing=args.allow_missing_chunks,
        max_output_bytes=max_output_bytes(args),
    )
    print(res.summary())
    return EXIT_OK if res.ok else EXIT_DATA
