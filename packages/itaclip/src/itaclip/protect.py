"""Outputs never replace inputs (issue 33): before any work, each file a command would write is
compared with the files it reads, by identity (the same file under any name or link).

Batches of images follow ``common_kernels.runtime.batch`` (``--in-place`` / ``in_place=True`` allows
their outputs into the input folders); the files checked here (a report, a text file, an
output beside an auxiliary-text file) are never meant to replace an input, so nothing allows it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from common_kernels.runtime.errors import InvalidArgument
from itaclip.sources import LOCAL_DIR, ModelSource


def _identity(path: Path) -> tuple[int, int]:
    status = os.stat(path)
    return (status.st_dev, status.st_ino)


def check_not_replacing(
    targets: Iterable[str | os.PathLike],
    inputs: Iterable[tuple[Path, str]],
    *,
    argument: str,
) -> None:
    """Refuse outputs that would replace an input file.

    Args:
        targets: the files to be written.
        inputs: the files read, each with what it is (``"a label map of voc21"``); only looked
            at when a target exists already.
        argument: the argument named in the error (the output's).

    Raises:
        InvalidArgument: ``TARGET would replace the input PATH (WHAT); choose another file``.
    """
    existing = {}
    for target in map(Path, targets):
        if target.is_file():
            existing[_identity(target)] = target
    if not existing:
        return
    for path, what in inputs:
        try:
            target = existing.get(_identity(path))
        except OSError:  # an input that is not there is not replaced
            continue
        if target is not None:
            raise InvalidArgument(
                argument,
                f"{target} would replace the input {path} ({what}); choose another file",
            )


def model_files(source: ModelSource) -> Iterable[tuple[Path, str]]:
    """The local files a load of ``source`` reads: its folder's files, or its weights file."""
    if source.name.startswith(LOCAL_DIR):
        yield from folder_files(Path(source.name[len(LOCAL_DIR) :]), "a file of the model")
    if source.pretrained is not None and os.path.isfile(source.pretrained):
        yield Path(source.pretrained), "the weights file"


def folder_files(folder: Path, what: str) -> Iterable[tuple[Path, str]]:
    """Every file below ``folder`` (a language model's folder), as an input."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path, what
