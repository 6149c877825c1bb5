"""Progress bars for long loops, readable in a terminal, under ``dvc repro`` and in Prefect logs.

``progress(...)`` is a ``tqdm`` bar on stderr. In a terminal it redraws in place. When stderr is
not a terminal (a Prefect task streaming the stage's output, CI logs, a file), a bar drawn with
carriage returns turns into hundreds of log lines, so there it prints one plain line per update
at most every ``DASHRL_PROGRESS_INTERVAL_S`` seconds (default 30), plus the final line:

    rl@dash:  40%|####      | 4/10 [02:41<04:02, 40.4s/step, reward=0.469, kept=0.75, s/step=38.2]

``DASHRL_PROGRESS=0`` (or tqdm's own ``TQDM_DISABLE=1``) turns every bar off. ``TqdmLoggingHandler``
writes log records through ``tqdm.write`` so that they do not tear a bar in a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm


def _interactive(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def enabled() -> bool:
    return os.environ.get("DASHRL_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


class LineStream:
    """A file for tqdm that turns each redraw (``'\\r' + status``) into one complete line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             initial: int = 0, disable: bool = False, stream: TextIO | None = None, **kwargs: Any) -> tqdm:
    """A progress bar over ``iterable`` (or ``total`` manual ``update`` calls). Extra keyword
    arguments go to ``tqdm``. Update the postfix with ``set_postfix(..., refresh=False)`` so that
    the line-mode interval holds. ``disable``: no bar (e.g. on every process but rank 0)."""
    stream = stream or sys.stderr
    options: dict[str, Any] = {"desc": desc, "total": total, "unit": unit, "initial": initial,
                               "disable": disable or not enabled()}
    if _interactive(stream):
        options.update(file=stream, dynamic_ncols=True, mininterval=0.5)
    else:
        interval = float(os.environ.get("DASHRL_PROGRESS_INTERVAL_S", "30"))
        options.update(file=LineStream(stream), ascii=True, ncols=100, mininterval=interval, maxinterval=max(interval, 10.0))
    options.update(kwargs)
    return tqdm(iterable, **options)


class TqdmLoggingHandler(logging.StreamHandler):
    """A stderr handler that prints through ``tqdm.write`` (bars are redrawn below the message)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)
