"""Run a volbin batch on a SLURM cluster: dask-jobqueue starts the workers as SLURM jobs.

    python scripts/slurm_batch.py 'data/sub-*/anat/*_T1w.nii.gz' --out-dir masks/ \\
        --jobs 4 --cores 8 --memory 32GB --walltime 02:00:00 --partition short

Run it on a login node (or in a small job of its own): it holds the dask scheduler and the
client, submits one SLURM job per ``--cores``/``--memory`` block, and calls
`volbin.batch(..., client=client)`, which sends one task per file to the workers.  Re-run
the same command after a time-out or a cancelled job: finished outputs are skipped.

Each worker job exports before starting its workers:

- ``VOLBIN_TMPDIR``: where a ``.nii.gz`` input is decompressed while it is processed; a
  node-local disk is fastest (volbin reads the copy on the node that made it).
- ``DASK_CONFIG``: a small config that lets workers keep glibc's default reuse of freed
  memory (distributed otherwise sets ``MALLOC_TRIM_THRESHOLD_``, costing ~35% more CPU per
  file in volbin; see docs/cluster.md).

For PBS, swap ``SLURMCluster`` for ``dask_jobqueue.PBSCluster`` (``queue=``, ``account=``,
``resource_spec=``); everything else stays the same.
"""

from __future__ import annotations

import argparse
import sys


def worker_prologue(local_dir: str) -> list[str]:
    """Shell lines run in each SLURM job before its dask workers start."""
    return [
        f'export VOLBIN_TMPDIR="{local_dir}"',
        f'export DASK_CONFIG="{local_dir}/dask-config-$SLURM_JOB_ID"',
        'mkdir -p "$DASK_CONFIG"',
        "printf 'distributed:\\n  nanny:\\n    pre-spawn-environ:\\n"
        '      MALLOC_TRIM_THRESHOLD_: null\\n\' > "$DASK_CONFIG/volbin.yaml"',
    ]


def walltime_minutes(walltime: str) -> int:
    """Minutes in a SLURM time limit: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S.

    >>> [walltime_minutes(t) for t in ("45", "30:00", "02:00:00", "1-12", "1-00:30:00")]
    [45, 30, 120, 2160, 1470]
    """
    days, _, rest = walltime.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        hours, minutes = [*parts, 0][:2]
        return int(days) * 1440 + hours * 60 + minutes
    return parts[0] * 60 + parts[1] if len(parts) == 3 else parts[0]


def lifetime(walltime: str, margin_minutes: int = 5) -> list[str]:
    """dask worker arguments that retire workers a few minutes before the walltime."""
    minutes = max(walltime_minutes(walltime) - margin_minutes, 1)
    return ["--lifetime", f"{minutes}m", "--lifetime-stagger", "2m"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="globs, list files, folders or paths")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--method", default="otsu")
    p.add_argument("--scope", default="volume")
    p.add_argument("--jobs", type=int, default=4, help="SLURM jobs to start (with --adapt: at most)")
    p.add_argument("--adapt", action="store_true", help="scale between 1 and --jobs jobs by load")
    p.add_argument("--cores", type=int, default=8, help="cores per job")
    p.add_argument("--processes", type=int, default=4, help="dask worker processes per job")
    p.add_argument("--memory", default="32GB", help="memory per job (split between processes)")
    p.add_argument("--walltime", default="02:00:00")
    p.add_argument("--partition", default=None, help="SLURM partition (queue)")
    p.add_argument("--account", default=None)
    p.add_argument("--local-dir", default="${TMPDIR:-/tmp}", help="node-local scratch folder")
    p.add_argument("--log-dir", default="dask-logs", help="SLURM job logs (shared)")
    args = p.parse_args(argv)

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    import volbin

    cluster = SLURMCluster(
        cores=args.cores,
        processes=args.processes,
        memory=args.memory,
        walltime=args.walltime,
        queue=args.partition,
        account=args.account,
        log_directory=args.log_dir,
        local_directory=args.local_dir,
        job_extra_directives=["--exclusive=user"],
        job_script_prologue=worker_prologue(args.local_dir),
        # Workers leave before the walltime; files they had not started go to the others,
        # and with --adapt new jobs replace them.
        worker_extra_args=lifetime(args.walltime),
    )
    print(cluster.job_script())
    if args.adapt:
        # New jobs are requested while files wait and released when idle.
        cluster.adapt(minimum_jobs=1, maximum_jobs=args.jobs)
    else:
        cluster.scale(jobs=args.jobs)
    with cluster, Client(cluster) as client:
        print(f"dashboard: {client.dashboard_link}", flush=True)
        result = volbin.batch(
            args.inputs,
            args.out_dir,
            method=args.method,
            scope=args.scope,
            client=client,
        )
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
