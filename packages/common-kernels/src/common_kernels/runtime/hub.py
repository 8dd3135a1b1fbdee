"""One rule for what a model name means, shared by every package's loaders.

A name that looks like a path is a local file or folder: it starts with ``./``, ``../``, ``/``
or ``~`` (or ``.\\`` on Windows), or it names something that exists. A missing one is a
``FileNotFoundError`` that names it, at once: it is never sent to the hub. Anything else is a
Hugging Face hub id (``owner/name``). Before 0.3 each package guessed on its own, and a
mistyped local folder waited through the hub's retries and came back as a validation or
connection error about the hub.

Before a loader asks the hub for a repository, :func:`check_hub` says within seconds when the
hub cannot be reached (``HF_HUB_OFFLINE`` set, or no route to it) and the repository is not in
the local cache, instead of the libraries' retries (35-50 s) ending in a message about a
missing ``config.json``.

Standard library only.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from common_kernels.runtime.errors import InvalidArgument, MissingPath, literal

HUB_TIMEOUT_S = 5.0
# owner/name, each part 1 to 96 characters, starting with a letter or a digit and ending with a
# word character; with the hub's own limits in is_hub_id (huggingface_hub.validate_repo_id's)
HUB_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}\w)?"
HUB_ID = re.compile(rf"^{HUB_PART}/{HUB_PART}$")


class HubUnreachableError(OSError):
    """The hub cannot be reached and the repository is not cached (a failure while working)."""


PATH_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


def looks_like_path(name: str | os.PathLike) -> bool:
    """Whether ``name`` means a local file or folder (see the module docstring)."""
    if isinstance(name, Path):
        return True
    text = os.fspath(name)
    return text.startswith(PATH_PREFIXES) or text in (".", "..") or Path(text).exists()


def local_or_hub(name: str | os.PathLike, *, what: str = "model folder") -> Path | str:
    """The local path ``name`` means, or ``name`` itself when it is a hub id.

    Args:
        name: what the user gave (a folder, a file, a hub id).
        what: the kind of local thing expected, for the error message.

    Raises:
        FileNotFoundError: ``name`` looks like a path and nothing is there.
    """
    if not looks_like_path(name):
        return os.fspath(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no {what} {os.fspath(name)} (nothing at {path.absolute()})")
    return path


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is a hub id, ``owner/name``: the one rule of every package, the hub's
    own included (letters, digits, ``-``, ``_`` and ``.``; each part starts with a letter or a
    digit, ends with neither ``-`` nor ``.``, and has at most 96 characters; no ``--`` or
    ``..``; no ``.git`` at the end).

    Args:
        name: what the user gave.
    """
    return (
        bool(HUB_ID.match(name))
        and "--" not in name
        and ".." not in name
        and not name.endswith(".git")
    )


def resolve_model_name(
    name: str | os.PathLike,
    *,
    known: Iterable[str] = (),
    argument: str = "model",
    what: str = "model folder",
) -> Path | str:
    """What a model name means, by the one rule of every package: a local path (which must
    exist), one of the package's ``known`` names, or a hub id ``owner/name``; anything else is
    an unknown model, refused at once (never sent to the hub, never reported as a hub failure).

    Args:
        name: what the user gave.
        known: the package's own names (bundled models, built-in configs), returned as given.
        argument: the argument named in the error.
        what: the kind of local thing expected, for the missing-path error.

    Raises:
        FileNotFoundError: ``name`` looks like a path and nothing is there.
        InvalidArgument: neither a path, a known name, nor ``owner/name``.
    """
    known = list(known)
    if not isinstance(name, Path) and os.fspath(name) in known:
        return os.fspath(name)
    source = local_or_hub(name, what=what)
    if isinstance(source, Path) or is_hub_id(source):
        return source
    names = f"known names: {', '.join(known)}; " if known else ""
    raise InvalidArgument(
        argument,
        f"unknown model {source!r}: {names}a local folder starts with ./ or / (or exists), a "
        "hub id is owner/name",
    )


def resolve_source(
    value: str | os.PathLike,
    argument: str,
    *,
    what: str = "model folder",
    known: Iterable[str] = (),
) -> Path | str:
    """:func:`resolve_model_name` for an API's argument: a missing path is a :class:`MissingPath`
    naming it (``vae: no VAE folder ./x (nothing at /abs/x)``), an unknown model an
    ``InvalidArgument`` naming it.

    Args:
        value: what the caller gave.
        argument: the API's argument (named in the messages).
        what: the kind of local thing expected, for the missing-path message.
        known: the package's own names, returned as given.

    Raises:
        MissingPath: ``value`` looks like a path and nothing is there (a ``FileNotFoundError``).
        InvalidArgument: neither a path, a known name, nor a hub id.
    """
    try:
        return resolve_model_name(value, known=known, argument=argument, what=what)
    except FileNotFoundError as error:
        raise MissingPath(argument, literal(error)) from None


def hub_cache_dir() -> Path:
    """Where huggingface_hub caches repositories (``HF_HUB_CACHE``, ``HF_HOME``/hub, or
    ``~/.cache/huggingface/hub``)."""
    if "HF_HUB_CACHE" in os.environ:
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface"))
    return Path(home).expanduser() / "hub"


def is_cached(repo_id: str, repo_type: str = "model") -> bool:
    """Whether a snapshot of ``repo_id`` is in the local hub cache."""
    folder = hub_cache_dir() / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
    return folder.is_dir() and any(folder.iterdir())


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network (huggingface_hub's true values)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def check_hub(repo_id: str, *, timeout: float = HUB_TIMEOUT_S, repo_type: str = "model") -> None:
    """Fail at once, saying why, when ``repo_id`` would need the hub and the hub is out of reach.

    A cached repository passes (the libraries load it from the cache). Otherwise
    ``HF_HUB_OFFLINE`` fails immediately, and a connection to the hub's host (``HF_ENDPOINT``,
    default huggingface.co) that does not open within ``timeout`` seconds fails then.

    Raises:
        HubUnreachableError: the message names the repository, the reason and what to do.
    """
    if is_cached(repo_id, repo_type):
        return
    advice = "download it on a machine with network access, or give a local folder (./DIR)"
    if hub_offline():
        raise HubUnreachableError(
            f"{repo_id} is not in the local hub cache ({hub_cache_dir()}) and HF_HUB_OFFLINE is "
            f"set, so the hub is not asked; {advice}"
        )
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    error = _connection_error(host, port, timeout)
    if error is not None:
        raise HubUnreachableError(
            f"cannot reach the Hugging Face hub ({host}) for {repo_id} within {timeout:g} s "
            f"({type(error).__name__}: {error}); {advice}"
        )


def _connection_error(host: str, port: int, timeout: float) -> OSError | None:
    """Why a TCP connection to ``(host, port)`` does not open within ``timeout`` seconds, name
    lookup included (``socket.create_connection``'s timeout leaves the lookup unbounded, and a
    resolver that does not answer waits far longer), or None when it opens."""
    outcome: list[OSError | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    attempt = threading.Thread(target=connect, name="check_hub", daemon=True)
    attempt.start()
    attempt.join(timeout)
    if not outcome:
        return TimeoutError("no answer, name lookup included")
    return outcome[0]
