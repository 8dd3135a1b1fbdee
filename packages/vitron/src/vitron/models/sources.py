"""What a model name means: the repository's loader rule (``common_kernels.runtime.hub``) for
Vitron.

A name that looks like a path (``./DIR``, ``/DIR``, ``~/DIR``, or an existing folder) is a
local folder; a missing one is a ``FileNotFoundError`` naming it, at once. A hub id
(``owner/name``) is checked within 5 s: ``HubUnreachableError`` when the hub cannot be reached
and the repository is not cached, before huggingface_hub's retries. Anything else
(``no_such_model``) is an unknown model, an ``InvalidArgument`` at once, never sent to the hub
(``common_kernels.runtime.hub.resolve_model_name``: the one rule of every package).
:func:`check_model_source` applies it to Vitron folders, :func:`pretrained_source` to the parts
a Vitron is built from and the specialists' pipelines (an LLM, a CLIP tower, a diffusers
pipeline), and :func:`check_open_clip_source` to open_clip names.
"""

from __future__ import annotations

import os
from pathlib import Path

from common_kernels.runtime.errors import InvalidValue, MissingPath, literal
from common_kernels.runtime.hub import (
    HubUnreachableError,
    check_hub,
    is_hub_id,
    resolve_source,
)
from vitron.checks import NamedFailure

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
SAVED_NAMES = (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR)


def check_model_source(model: str | os.PathLike) -> Path | str:
    """The local Vitron folder or the reachable hub id that ``model`` names.

    Args:
        model: a folder written by ``VitronModel.save_pretrained`` or a hub id.

    Raises:
        MissingPath: ``model`` looks like a path and nothing is there.
        InvalidArgument: neither a path nor a hub id ``owner/name`` (an unknown model), a file,
            a folder that is not a Vitron folder, or a malformed hub id.
        HubUnreachableError: a hub id that is not cached while the hub is out of reach.
    """
    source = resolve_source(model, "model", what="Vitron folder")
    if isinstance(source, Path):
        head = f"{{model}} {literal(model)}"
        if not source.is_dir():
            message = f"{head} is a file; expected a Vitron folder or a hub id org/name"
            raise InvalidValue("model", message)
        missing = [item for item in SAVED_NAMES if not (source / item).exists()]
        if missing:
            raise InvalidValue(
                "model",
                f"{head}: the folder lacks {', '.join(missing)} (a Vitron folder is "
                "written by VitronModel.save_pretrained or `vitron tiny-model DIR`)",
            )
        return source
    return reachable_hub_id(source, "model")


class HubUnreachable(NamedFailure, HubUnreachableError):
    """The hub cannot be reached for an argument's model (an ``OSError``), the argument named
    (:class:`~vitron.checks.NamedFailure`)."""


def reachable_hub_id(repo_id: str, argument: str) -> str:
    """``repo_id`` when it is a well-formed hub id that is cached or whose hub can be reached.

    Args:
        repo_id: ``owner/name``.
        argument: the API's argument, named in the messages.
    """
    head = f"{{{argument}}} {literal(repo_id)}"
    if not is_hub_id(repo_id):
        message = f"{head}: not a hub id owner/name (a local folder is written ./DIR)"
        raise InvalidValue(argument, message)
    try:
        check_hub(repo_id)
    except HubUnreachableError as err:
        raise HubUnreachable(argument, f"cannot load {head}: {literal(err)}") from None
    return repo_id


def pretrained_source(name: str | os.PathLike, argument: str, what: str) -> str:
    """The local folder or the reachable hub id that ``name`` means, as ``from_pretrained``
    takes it.

    Args:
        name: a folder or a hub id.
        argument: the API's argument name (``"llm"``, ``"vision"``, ``"model"``).
        what: the kind of folder, for the message (``"causal LM folder"``).

    Raises:
        MissingPath: ``name`` looks like a path and nothing is there.
        InvalidArgument: neither a path nor a hub id ``owner/name`` (an unknown model), a
            malformed hub id.
        HubUnreachableError: a hub id that is not cached while the hub is out of reach.
    """
    source = resolve_source(name, argument, what=what)
    return str(source) if isinstance(source, Path) else reachable_hub_id(source, argument)


def check_open_clip_source(spec: str, argument: str = "vision") -> None:
    """The loader rule for an open_clip name: ``local-dir:PATH`` must exist, ``hf-hub:REPO``
    and a built-in ``name/tag`` whose weights live on the hub must be reachable.

    Args:
        spec: ``"hf-hub:org/repo"``, ``"local-dir:/path"`` or ``"<name>/<pretrained tag>"``.
        argument: the argument named in the messages.
    """
    if spec.startswith("local-dir:"):  # always a folder, whatever it looks like
        folder = Path(spec[10:]).expanduser()
        if not folder.is_dir():
            message = f"no open_clip folder {spec[10:]} (nothing at {folder.absolute()})"
            raise MissingPath(argument, literal(message))
    elif spec.startswith("hf-hub:"):
        reachable_hub_id(spec[7:], argument)
    else:
        import open_clip

        model_name, _, tag = spec.partition("/")
        # open_clip's hf_hub entry is "owner/name/" or "owner/name/file"
        hub_file = open_clip.get_pretrained_cfg(model_name, tag).get("hf_hub", "") if tag else ""
        if hub_file:
            reachable_hub_id(os.path.split(hub_file)[0], argument)
