"""The library's messages: `logging` under the "pipeline" logger, shown as plain lines on stdout
once a job (`cli.run_job`) or a training worker calls `setup`; the library alone configures
nothing. In a training worker only rank 0's messages are shown, except those logged with
`extra=EVERY_RANK` (a rank's own loader or fault): N ranks would otherwise print N copies."""

from __future__ import annotations

import logging
import sys

EVERY_RANK = {"every_rank": True}


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a message comes (Ray's and pytest's redirections)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None: ...


class RankZero(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or getattr(record, "every_rank", False)


def setup(rank: int = 0) -> None:
    """Lines on stdout, rank 0's only (idempotent: a second call just sets the rank)."""
    logger = logging.getLogger("pipeline")
    handler = next((h for h in logger.handlers if isinstance(h, _Stdout)), None)
    if handler is None:
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # no second copy through a root handler someone else set
    for f in list(handler.filters):
        handler.removeFilter(f)
    handler.addFilter(RankZero(rank))
