"""Batches of image files, the same in every package: which files, where each result goes, and
the rules that keep a user's photos safe. Standard library only.

- :func:`find_images` walks the inputs: files as given, folders by name order; subfolders only
  with ``recursive`` (their images are then placed in the same subfolders of the output), and
  without it the images left out are counted so that a command can say so. Hidden files
  (``.name``, such as an unfinished atomic write) are never inputs.
- :func:`output_paths` says where each result goes and refuses, before any work, an output that
  would replace an input (the same file, or the output folder being an input folder) unless
  ``in_place`` allows it, and two inputs that would be written to one file.
- :func:`survey` decodes every input before a model is loaded: a bad file stops the batch at
  once, naming it, or with ``keep_going`` is set aside to be reported at the end.
- :class:`BatchRun` counts what finished, for the interrupt line and the command that resumes.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.files import IMAGE_SUFFIXES

T = TypeVar("T")

PYTHON_MENTIONS = {"in_place": "in_place=True", "recursive": "recursive=True"}


class MissingImages(InvalidArgument, FileNotFoundError):
    """An input path that does not exist, or inputs that hold no image (an
    :class:`InvalidArgument` and a ``FileNotFoundError``)."""


@dataclass(frozen=True)
class InputImage:
    """One input file and its place under an output folder.

    Args:
        path: the file.
        relative: where its result goes under an output folder: its name, or its path below
            the walked folder (``sub/a.png``) with ``recursive``.
    """

    path: Path
    relative: Path


@dataclass(frozen=True)
class ImageListing:
    """What :func:`find_images` found.

    Args:
        images: the input files, in order.
        folders: the folders that were walked.
        left_out: images in subfolders that were not walked (``recursive`` off).
        left_out_folders: how many subfolders held them.
    """

    images: tuple[InputImage, ...]
    folders: tuple[Path, ...] = ()
    left_out: int = 0
    left_out_folders: int = 0

    @property
    def paths(self) -> list[Path]:
        return [image.path for image in self.images]

    def left_out_note(self, recursive: str = "recursive=True", verb: str = "takes") -> str | None:
        """One sentence on the images left out in subfolders, or None when there are none.

        Args:
            recursive: how the reader asks for them (a CLI gives its flag).
            verb: what the command does to an image (``"restores"``, ``"segments"``).
        """
        if not self.left_out:
            return None
        return (
            f"left out {self.left_out} image(s) in {self.left_out_folders} subfolder(s) of the "
            f"input folder(s); {recursive} {verb} them too, in the same subfolders"
        )


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of the image suffixes (case-insensitive) and is not hidden."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def find_images(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    recursive: bool = False,
    exclude: Sequence[str | os.PathLike] = (),
    argument: str = "inputs",
) -> ImageListing:
    """The image files that ``inputs`` name.

    Files are taken as given (they must have an image suffix). A folder gives its images in
    name order; its subfolders too, depth first in name order, with ``recursive``, else their
    images are only counted. Hidden files and folders are skipped, symbolic links to folders
    are not followed, and a file named twice is taken once.

    Args:
        inputs: one path or several, each a file or a folder.
        recursive: walk subfolders.
        exclude: folders never walked (an output folder inside an input folder).
        argument: the argument named in the errors.

    Raises:
        MissingImages: a path that does not exist, or no image at all.
        InvalidArgument: a file without an image suffix.
    """
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not given:
        raise InvalidArgument(argument, "give at least one image file or folder")
    skip = {_resolved(Path(p)) for p in exclude}
    images: list[InputImage] = []
    folders: list[Path] = []
    left_out = left_out_folders = 0
    for item in map(Path, given):
        if item.is_dir():
            folders.append(item)
            found, hidden, hidden_folders = _walk(item, recursive, skip)
            images += found
            left_out += hidden
            left_out_folders += hidden_folders
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES:
                raise InvalidArgument(
                    argument, f"{item} is not an image file (expected {', '.join(IMAGE_SUFFIXES)})"
                )
            images.append(InputImage(item, Path(item.name)))
        else:
            raise MissingImages(argument, f"no such file or folder: {item}")
    first: dict[Path, InputImage] = {}
    for image in images:
        first.setdefault(_resolved(image.path), image)
    unique = list(first.values())
    if not unique:
        where = ", ".join(map(str, given))
        more = f" ({left_out} more in subfolders: {{recursive}} walks them)" if left_out else ""
        raise MissingImages(
            argument,
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {where}{more}",
            mentions=PYTHON_MENTIONS,
        )
    return ImageListing(tuple(unique), tuple(folders), left_out, left_out_folders)


def _walk(folder: Path, recursive: bool, skip: set[Path]) -> tuple[list[InputImage], int, int]:
    """(images found, images left out in subfolders, subfolders holding them)."""
    found: list[InputImage] = []
    left_out = left_out_folders = 0
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and _resolved(here / d) not in skip
        )
        names = sorted(f for f in files if is_image_name(f) and (here / f).is_file())
        if here == folder or recursive:
            found += [InputImage(here / f, (here / f).relative_to(folder)) for f in names]
        elif names:
            left_out += len(names)
            left_out_folders += 1
    return found, left_out, left_out_folders


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def output_paths(
    images: ImageListing,
    output: str | os.PathLike,
    *,
    in_place: bool = False,
    suffix: str | None = None,
    argument: str = "output",
) -> list[Path]:
    """Where each input's result goes, checked before any work.

    One input with an output that has an image suffix (and is not a folder) goes to that file;
    otherwise each input goes to ``output / relative`` (its subfolder kept with ``recursive``),
    with its suffix replaced by ``suffix`` when given.

    Args:
        images: what :func:`find_images` found.
        output: an image file (one input) or a folder.
        in_place: allow results to replace their inputs (written atomically).
        suffix: the suffix of every result (``".png"``); None keeps each input's.
        argument: the argument named in the errors.

    Raises:
        InvalidArgument: several inputs for one file, a folder name with a suffix, two inputs
            for one result, or (without ``in_place``) a result that would replace an input or
            an output folder that is an input folder.
    """
    output = Path(output)
    single = len(images.images) == 1
    if output.suffix.lower() in IMAGE_SUFFIXES and not output.is_dir():
        if not single:
            raise InvalidArgument(
                argument,
                f"{output}: {len(images.images)} images cannot go into one image file; give an "
                "output folder (a name without a suffix)",
            )
        targets = [output]
    elif output.suffix and not output.is_dir():
        raise InvalidArgument(
            argument,
            f"{output}: {output.suffix!r} is not an image suffix ({', '.join(IMAGE_SUFFIXES)}); "
            "an output folder's name must have no suffix",
        )
    else:
        targets = [
            output / (image.relative if suffix is None else image.relative.with_suffix(suffix))
            for image in images.images
        ]
    _check_unique(images.images, targets, argument)
    if not in_place:
        check_not_inputs(targets, images, output, argument=argument)
    return targets


def _check_unique(images: Sequence[InputImage], targets: Sequence[Path], argument: str) -> None:
    seen: dict[Path, Path] = {}
    for image, target in zip(images, targets, strict=True):
        key = _resolved(target)
        if key in seen:
            raise InvalidArgument(
                argument, f"{seen[key]} and {image.path} would both be written to {target}"
            )
        seen[key] = image.path


def check_not_inputs(
    targets: Sequence[Path],
    images: ImageListing,
    output: str | os.PathLike | None = None,
    *,
    argument: str = "output",
    in_place_allowed: bool = True,
) -> None:
    """Refuse outputs that would replace inputs: a target that is an input file (the same
    path, or the same file through a link), or an output folder that is an input folder.

    Args:
        targets: the files to be written.
        images: the inputs.
        output: the output folder, when there is one.
        argument: the argument named in the error.
        in_place_allowed: the caller offers ``in_place`` (the message says so).

    Raises:
        InvalidArgument: naming the output and the input, and how to allow it.
    """
    advice = "choose another output"
    if in_place_allowed:
        advice += ", or pass {in_place} to replace the inputs (atomically)"
    if output is not None and Path(output).is_dir():
        for folder in images.folders:
            if _resolved(Path(output)) == _resolved(folder):
                raise InvalidArgument(
                    argument,
                    f"{output} is the input folder {folder}: its images would be replaced; "
                    + advice,
                    mentions=PYTHON_MENTIONS,
                )
    inputs = {_identity(image.path): image.path for image in images.images}
    for target in targets:
        source = inputs.get(_identity(target)) if target.exists() else None
        if source is not None:
            raise InvalidArgument(
                argument,
                f"{target} would replace the input {source}; " + advice,
                mentions=PYTHON_MENTIONS,
            )


def _identity(path: Path) -> tuple[int, int]:
    """(device, inode) of an existing file: the same file under any name or link."""
    status = os.stat(path)
    return (status.st_dev, status.st_ino)


@dataclass(frozen=True)
class Skipped:
    """An input set aside, and why (one line)."""

    path: Path
    reason: str


@dataclass
class Survey(Generic[T]):
    """What :func:`survey` learnt: each readable input's information, the unreadable ones."""

    readable: dict[Path, T] = field(default_factory=dict)
    unreadable: list[Skipped] = field(default_factory=list)


def survey(
    paths: Sequence[Path],
    inspect: Callable[[Path], T],
    *,
    keep_going: bool = False,
    errors: tuple[type[BaseException], ...] = (ValueError, OSError),
    on_unreadable: Callable[[Skipped], None] | None = None,
) -> Survey[T]:
    """Decode (``inspect``) every input before any model loads.

    Args:
        paths: the inputs.
        inspect: reads one file completely and returns what the batch needs of it (its
            channels, its size); raises one of ``errors`` for a file it cannot read.
        keep_going: set unreadable files aside (each passed to ``on_unreadable``) instead of
            raising the first error.
        errors: what counts as an unreadable file.
        on_unreadable: told about each file set aside.

    Raises:
        the first of ``errors`` raised, without ``keep_going``.
    """
    found: Survey[T] = Survey()
    for path in paths:
        try:
            found.readable[path] = inspect(path)
        except errors as error:
            if not keep_going:
                raise
            reason = getattr(error, "reason", None) or str(error)  # ImageReadError: its reason
            skipped = Skipped(path, " ".join(reason.split()) or type(error).__name__)
            found.unreadable.append(skipped)
            if on_unreadable is not None:
                on_unreadable(skipped)
    return found


class BatchRun:
    """Counts the results of a batch as they are written, for the messages of an interrupted or
    finished run.

    Args:
        total: the results to write in this run.
        resume: the command that resumes the batch (None: none to give).
    """

    def __init__(self, total: int, resume: str | None = None) -> None:
        self.total = total
        self.resume = resume
        self.finished = 0
        self.skipped: list[Skipped] = []

    def done(self) -> None:
        """One more result written."""
        self.finished += 1

    def skip(self, path: Path, reason: str) -> Skipped:
        """Set an input aside (``keep_going``); returns the record."""
        skipped = Skipped(path, reason)
        self.skipped.append(skipped)
        return skipped

    def interrupt_hint(self) -> str:
        """What an interrupt line adds: how many finished, and the command that resumes."""
        text = f" after {self.finished} of {self.total} image(s)"
        return text + (f"; resume with: {self.resume}" if self.resume else "")

    def skipped_summary(self) -> str:
        """The inputs set aside, one per line after a header (empty when none)."""
        return skipped_summary(self.skipped)


def skipped_summary(skipped: Sequence[Skipped]) -> str:
    """Inputs set aside (``keep_going``), one per line after a header (empty when none)."""
    if not skipped:
        return ""
    lines = [f"  {item.path}: {item.reason}" for item in skipped]
    return f"skipped {len(skipped)} input(s) that could not be read:\n" + "\n".join(lines)


def resume_command(program: str, argv: Sequence[str], flag: str = "--skip-existing") -> str:
    """The command line that resumes a batch: ``argv`` with ``flag`` added (once), quoted for
    a POSIX shell.

    Args:
        program: the command and subcommand (``"semanir restore"``).
        argv: the arguments the run was given, without the program.
        flag: the option that skips finished results.
    """
    words = list(argv) if flag in argv else [*argv, flag]
    return " ".join([program, shlex.join(words)])


class CommandSession:
    """One command line and the batch it runs: what an interrupt line adds.

    Args:
        argv: the arguments without the program name.
    """

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.run: BatchRun | None = None

    def interrupt_hint(self) -> str:
        """`` after N of M image(s); resume with: ...`` once a batch runs, else nothing."""
        return "" if self.run is None else self.run.interrupt_hint()


def add_batch_options(
    parser: argparse.ArgumentParser,
    *,
    results: str = "results",
    flags: Sequence[str] = ("--recursive", "--keep-going", "--skip-existing", "--in-place"),
) -> None:
    """The folder-batch flags, worded the same in every command that takes folders.

    Args:
        parser: the command's parser.
        results: what the command writes per input (``"outputs"``, ``"PNGs"``).
        flags: the ones this command takes, of ``--recursive``, ``--keep-going``,
            ``--skip-existing`` and ``--in-place``.
    """
    helps = {
        "--recursive": "walk the subfolders of input folders too, mirroring them under the "
        "output folder (default: only the folders' own images; the images left out are counted)",
        "--keep-going": "skip inputs that cannot be read (one line each) and exit 1 at the end "
        "with their list (default: stop before any model loads, naming the file)",
        "--skip-existing": f"leave out inputs whose {results} exist: resumes an interrupted "
        "folder run",
        "--in-place": f"allow {results} to replace their input files (each written atomically) "
        "and the output folder to be an input folder (default: refused)",
    }
    for flag in flags:
        parser.add_argument(flag, action="store_true", help=helps[flag])


def add_distributed_options(parser: argparse.ArgumentParser, *, results: str = "results") -> None:
    """``--shard I/N``, ``--check-shards N`` and ``--ray [ADDRESS]`` with its pool options,
    worded the same in every batch command.

    Args:
        parser: the command's parser.
        results: what the command writes per input (``"restored images"``).
    """
    parser.add_argument(
        "--shard", default=None, metavar="I/N",
        help=f"run block I (0-based) of the N blocks of the inputs in listing order, leaving out "
        f"{results} that exist (a killed shard resumes); for Slurm arrays, Kubernetes indexed "
        "jobs or shell loops",
    )  # fmt: skip
    parser.add_argument(
        "--check-shards", type=int, default=None, metavar="N",
        help=f"load no model: check that the N shards (N in [1, 99999]; 1 for a --ray run) wrote "
        f"every input's {results} exactly once (their ledgers in OUT/.shards/), and list what "
        "is missing (default: off)",
    )  # fmt: skip
    parser.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help="run on a Ray cluster (pip install the [ray] extra): ADDRESS 'auto', HOST:PORT or "
        "ray://HOST:PORT; no value: RAY_ADDRESS, else a local cluster. OUT must be storage "
        "every node sees",
    )  # fmt: skip
    parser.add_argument("--ray-workers", type=int, default=1, metavar="N",
                        help="--ray: actors, each loading the model once, in [1, the cluster's "
                        "CPUs or GPUs] (default: 1)")  # fmt: skip
    parser.add_argument("--ray-gpus", type=float, default=0.0, metavar="G",
                        help="--ray: GPUs each actor reserves, in [0, a node's GPUs] "
                        "(default: 0)")  # fmt: skip
    parser.add_argument("--ray-batch", type=int, default=8, metavar="B",
                        help="--ray: inputs per actor call, in [1, the inputs] "
                        "(default: 8)")  # fmt: skip


def distributed_mode(args: argparse.Namespace) -> str:
    """Which of ``--shard``, ``--check-shards`` and ``--ray`` a command line asks for
    (``"plain"`` for none); two of them are a usage error (``ValueError``)."""
    given = [name for name, value in (("--shard", args.shard), ("--check-shards",
             args.check_shards), ("--ray", args.ray)) if value is not None]  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} exclude each other")
    return given[0].lstrip("-") if given else "plain"
