"""What a model name means: the repository's loader rule (``common_kernels.hub``) for Vitron.

A name that looks like a path (``./DIR``, ``/DIR``, ``~/DIR``, or an existing folder) is a
local Vitron folder; a missing one is a ``FileNotFoundError`` naming it, at once. Anything else
is a hub id (``owner/name``), and :func:`check_model_source` fails within 5 s with
``HubUnreachableError`` when the hub cannot be reached and the repository is not cached,
before huggingface_hub's retries.
"""

from __future__ import annotations

import os
from pathlib import Path

from common_kernels.hub import HubUnreachableError, check_hub, local_or_hub
from vitron.checks import Names, named

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
SAVED_NAMES = (CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR)


def check_model_source(model: str | os.PathLike, names: Names | None = None) -> Path | str:
    """The local Vitron folder or the reachable hub id that ``model`` names.

    Args:
        model: a folder written by ``VitronModel.save_pretrained`` or a hub id.
        names: how the caller spells the argument (``{"model": "--model"}``).

    Raises:
        FileNotFoundError: ``model`` looks like a path and nothing is there.
        ValueError: a file, a folder that is not a Vitron folder, or a malformed hub id.
        HubUnreachableError: a hub id that is not cached while the hub is out of reach.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    name = named("model", names)
    try:
        source = local_or_hub(model, what="Vitron folder")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{name}: {err}") from None
    if isinstance(source, Path):
        if not source.is_dir():
            raise ValueError(
                f"{name} {model} is a file; expected a Vitron folder or a hub id org/name"
            )
        missing = [item for item in SAVED_NAMES if not (source / item).exists()]
        if missing:
            raise ValueError(
                f"{name} {model}: the folder lacks {', '.join(missing)} (a Vitron folder is "
                "written by VitronModel.save_pretrained or `vitron tiny-model DIR`)"
            )
        return source
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ValueError(
            f"{name} {model}: not a hub id owner/name (a local folder is written ./DIR)"
        ) from None
    try:
        check_hub(source)
    except HubUnreachableError as err:
        raise HubUnreachableError(f"cannot load {name} {model}: {err}") from None
    return source
