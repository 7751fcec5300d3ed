"""A progress bar over dask tasks, shown on a terminal for work that lasts over a second."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dask.callbacks import Callback

__all__ = ["progress"]


class _TqdmCallback(Callback):
    def __init__(self, desc: str) -> None:
        super().__init__()
        self.desc = desc
        self.bar: Any = None

    def _start_state(self, dsk: Any, state: Any) -> None:
        from tqdm import tqdm

        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        # delay=1: nothing is drawn for work shorter than a second.
        self.bar = tqdm(total=total, desc=self.desc, unit="task", delay=1.0, leave=False, file=sys.stderr)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextmanager
def progress(desc: str = "volbin", enabled: bool | None = None) -> Iterator[None]:
    """Show a progress bar for dask computations inside the block (threaded scheduler).

    Enabled by default only when standard error is a terminal.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield
        return
    with _TqdmCallback(desc):
        yield
