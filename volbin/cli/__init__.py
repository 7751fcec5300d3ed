"""The `volbin` command line: flags -> Recipe -> the Python API.

One module per command (`binarize`, `info`, `threshold`, `demo`, `classify`, `normalize`, `batch`,
`convert`, `export`, `preview`), each with ``add_parser(subparsers)`` and ``run(args) -> int``;
`_common` holds what they share.  No logic lives here that the API lacks.  Errors reach the
user as one line and an exit code
(2 for usage, 1 for bad data or files); ``--debug`` shows the traceback.  Nothing heavy is
imported before a command runs, so ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

try:
    from . import batch, binarize, classify, convert, demo, export, info, normalize, preview, threshold
    from ._common import EXIT_DATA, EXIT_OK, EXIT_USAGE, Parser, UsageError
except KeyboardInterrupt:  # Ctrl-C while the command line starts: no traceback
    print("volbin: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

__all__ = ["build_parser", "main"]

#: The commands, in the order of ``volbin --help``.
COMMANDS = (demo, info, threshold, binarize, classify, normalize, batch, convert, export, preview)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="volbin",
        description="Binary volumes from 3D/4D medical images (NIfTI, .npy, zarr): thresholds, "
        "stochastic binarization and dithering, streamed and reproducible.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            commands:
              volbin demo                         run the whole pipeline on a built-in phantom
              volbin info IN [--compare GREY]     geometry and statistics (and rendering error) of a volume
              volbin threshold IN [--mask M]      every histogram threshold method side by side
              volbin binarize IN OUT [options]    binarize a volume, write it with a JSON sidecar
              volbin classify IN OUT --method M   tissue classes (multi-Otsu, k-means), labels or masks
              volbin normalize IN OUT --method M  z-score, histogram matching, Nyul, WhiteStripe, N4
              volbin batch INPUTS --out-dir DIR   binarize many volumes on a dask cluster, resumably
              volbin convert IN OUT               convert between NIfTI, .npy and zarr
              volbin export-slices IN OUT_DIR     dithered 1-bit PNG layers for a bitmap 3D printer
              volbin preview IN [--mask M]        a PNG of slices, overlays and the histogram
            'volbin COMMAND --help' shows each command's options and examples."""),
    )
    parser.add_argument("--version", action="version", version=f"volbin {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    print(f"volbin: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Warnings about the data (`VolbinWarning`) are printed as one line each on stderr.
    SIGTERM is handled as Ctrl-C (the temporary files of an interrupted write are removed,
    and so are decompressed copies of inputs), and nibabel's log messages are not shown;
    both are restored when the command ends.
    """
    try:
        import logging
        import warnings

        from ..errors import VolbinWarning

        with warnings.catch_warnings(), _sigterm_as_interrupt(), _quiet_logger("nibabel", logging):
            warnings.simplefilter("always", VolbinWarning)
            warnings.showwarning = _show_warning
            return _main(argv)
    except KeyboardInterrupt:  # before or after the command ran
        print("volbin: interrupted", file=sys.stderr)
        return 130


class _quiet_logger:
    """Raise a logger's level above CRITICAL for the duration of a block."""

    def __init__(self, name: str, logging: Any) -> None:
        self.logger = logging.getLogger(name)
        self.level = logging.CRITICAL + 1

    def __enter__(self) -> None:
        self.saved = self.logger.level
        self.logger.setLevel(self.level)

    def __exit__(self, *exc: Any) -> None:
        self.logger.setLevel(self.saved)


class _sigterm_as_interrupt:
    """While the block runs (in the main thread), SIGTERM raises KeyboardInterrupt."""

    def __enter__(self) -> None:
        import signal
        import threading

        self.saved: Any = None
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
            return

        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        self.saved = signal.signal(signal.SIGTERM, interrupt)

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self.saved is not None:
            signal.signal(signal.SIGTERM, self.saved)


def _main(argv: list[str] | None) -> int:
    from .. import _prefetch
    from ..errors import VolbinError, VolbinFileError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:  # accepted anywhere on the line, not only before the command
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        ahead = getattr(args, "input", None)
        if isinstance(ahead, str):
            # Decompress a .nii.gz input while dask and the rest are imported.
            _prefetch.start(ahead)
        try:
            import dask
            import dask.threaded

            # The threaded scheduler given as a function: named by a string, dask would import
            # dask.distributed (a third of a second) only to look for a client.  Commands that
            # run on a cluster pass their client explicitly.
            with dask.config.set(scheduler=dask.threaded.get):
                return int(args.func(args))
        finally:
            if isinstance(ahead, str):
                _prefetch.discard(ahead)
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_OK
    except UsageError as exc:
        if debug:
            raise
        print(f"volbin: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VolbinError as exc:
        if debug:
            raise
        msg = str(exc)
        src = getattr(args, "input", None)
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
