"""What a command prints: third-party progress bars and notices off unless asked for.

open_clip logs its notices on the root logger ("No pretrained weights loaded for model ..."
after ``--pretrained ''``), so they are filtered there by where they come from.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import open_clip

from common_kernels.runtime.quiet import quiet_libraries


class OpenClipNotices(logging.Filter):
    """Drops open_clip's notices (it logs them on the root logger: "No pretrained weights
    loaded for model ..." after ``--pretrained ''``); its errors pass."""

    folder = os.path.dirname(open_clip.__file__)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(self.folder)


@contextlib.contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    """Third-party progress bars, deprecation notices and tips off while a command works
    (``common_kernels.runtime.quiet.quiet_libraries``), open_clip's notices too, unless
    ``verbose``."""
    with quiet_libraries(verbose):
        if verbose:
            yield
            return
        notices = OpenClipNotices()
        logging.getLogger().addFilter(notices)
        try:
            yield
        finally:
            logging.getLogger().removeFilter(notices)
