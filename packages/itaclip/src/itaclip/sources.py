"""Where a CLIP comes from: open_clip names and the repository's one loader rule.

``resolve_model(model_name, pretrained)`` reads the name offline and says what a load will do:

- ``local-dir:PATH`` or a name that looks like a path (``./``, ``/``, ``~``, or an existing
  folder; ``common_kernels.runtime.hub.local_or_hub``) is a local folder holding
  ``open_clip_config.json``; a missing one is a ``FileNotFoundError`` naming it, at once.
- ``hf-hub:owner/name`` or ``owner/name`` is a hub repository of open_clip weights.
- a built-in open_clip name with a ViT image tower (``ViT-B-16-quickgelu``; ``supported_models``)
  takes ``pretrained``: one of its weights tags (downloaded from the hub), a weights file, or
  ``None``/``""`` for random weights. A built-in name without one (``RN50``, the timm towers)
  is refused at once.
- anything else is an unknown model, refused at once
(``common_kernels.runtime.hub.resolve_model_name``,
  the one rule of every package; itaclip's known names are ``supported_models()``): never sent
  to the hub, never reported as a hub failure.

``check_model_hub`` then fails within seconds, saying so, when a repository the load needs is
not cached and the hub cannot be reached (``common_kernels.runtime.hub.check_hub``), instead of
open_clip's retries.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import open_clip

from common_kernels.runtime.errors import InvalidArgument, InvalidValue, MissingPath, literal
from common_kernels.runtime.hub import (
    check_hub,
    is_hub_id,
    local_or_hub,
    looks_like_path,
    resolve_model_name,
)
from itaclip.tiny import CONFIG_FILE

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


class ModelLoadError(OSError):
    """A checked model could not be built or loaded (a failure while working)."""


@dataclass(frozen=True)
class ModelSource:
    """What ``open_clip.create_model`` is given, and the hub repositories it will ask.

    Args:
        name: the open_clip model name (built-in, ``hf-hub:owner/name`` or ``local-dir:PATH``).
        pretrained: the weights tag or file of a built-in name (``None``: random weights, or
            the weights of the hub repository or folder).
        hub_repos: hub repositories the load downloads from (weights, HF tokenizer); empty for
            local models.
    """

    name: str
    pretrained: str | None = None
    hub_repos: tuple[str, ...] = ()

    def describe(self) -> str:
        """The model in words: ``ViT-B-16-quickgelu (pretrained 'openai')``."""
        if self.pretrained is None:
            return self.name
        return f"{self.name} (pretrained {self.pretrained!r})"

    @property
    def cache_id(self) -> str | None:
        """Identity of weights fixed by their name (a hub repository or tag), for the text cache;
        ``None`` when only a fingerprint of the weights can identify them (files, folders)."""
        fixed = self.name.startswith(HF_HUB) or (
            self.pretrained is not None and not os.path.isfile(self.pretrained)
        )
        return f"{self.name}|{self.pretrained}" if fixed else None


def supported_models() -> tuple[str, ...]:
    """open_clip's built-in model names whose image tower is open_clip's own ViT (what
    ``ITACLIPVisionEncoder`` wraps): itaclip's known model names (configs registered with
    ``open_clip.add_model_config`` included)."""
    found = []
    for name in open_clip.list_models():
        vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
        if isinstance(vision.get("layers"), int) and not vision.get("timm_model_name"):
            found.append(name)
    return tuple(found)


def resolve_model(
    model_name: str | os.PathLike,
    pretrained: str | os.PathLike | None,
) -> ModelSource:
    """Read a model name offline (see the module docstring); nothing is loaded or downloaded.

    Args:
        model_name: a built-in open_clip name, ``hf-hub:owner/name``, ``owner/name``,
            ``local-dir:PATH`` or a folder path.
        pretrained: weights tag or file for a built-in name (ignored otherwise).

    Raises:
        InvalidArgument: (``model_name``) an unknown model name (``model_name: unknown model
            ...``), a built-in one without a ViT image tower, a path where nothing is, a file
            given as a model folder, a folder without an open_clip config; (``pretrained``) an
            unknown weights tag, a weights path where nothing is or a folder.
    """
    text = os.fspath(model_name)
    if text.startswith(HF_HUB):
        repo = text[len(HF_HUB) :]
        if not is_hub_id(repo):
            raise InvalidValue(
                "model_name", "{model_name} " + literal(f"{text!r}: expected hf-hub:owner/name")
            )
        return ModelSource(text, None, (repo,))
    if text.startswith(LOCAL_DIR):
        return local_model(Path(text[len(LOCAL_DIR) :]), text)
    if text in supported_models():
        weights = check_weights(text, pretrained)
        return ModelSource(text, weights, builtin_hub_repos(text, weights))
    if text in open_clip.list_models():
        raise InvalidArgument(
            "model_name",
            literal(f"{text!r}")
            + " is an open_clip model without a ViT image tower (itaclip wraps open_clip's "
            "VisionTransformer); use a ViT, e.g. ViT-B-16-quickgelu",
        )
    try:
        source = resolve_model_name(text, known=supported_models(), argument="model_name")
    except FileNotFoundError as error:
        raise MissingPath("model_name", literal(error)) from None
    if isinstance(source, Path):
        return local_model(source, text)
    return ModelSource(f"{HF_HUB}{source}", None, (source,))


def local_model(folder: Path, text: str) -> ModelSource:
    """A model folder holding an open_clip config, checked.

    Args:
        folder: the folder.
        text: the name as given (for messages).
    """
    try:
        folder = Path(local_or_hub(folder))
    except FileNotFoundError as error:
        raise MissingPath("model_name", literal(error)) from None
    if not folder.is_dir():
        raise InvalidValue(
            "model_name",
            "{model_name} "
            + literal(
                f"{text} is a file; expected an open_clip model name, hf-hub:org/repo or "
                f"a folder holding {CONFIG_FILE}"
            ),
        )
    config = folder / CONFIG_FILE
    try:
        ok = "model_cfg" in json.loads(config.read_text())
    except (OSError, ValueError, TypeError):
        ok = False
    if not ok:
        raise InvalidValue(
            "model_name",
            "{model_name} "
            + literal(
                f"{text}: {config} is missing or is not an open_clip config "
                '(a JSON object with "model_cfg"; `itaclip tiny-model DIR` writes one)'
            ),
        )
    return ModelSource(f"{LOCAL_DIR}{folder}")


def check_weights(model: str, pretrained: str | os.PathLike | None) -> str | None:
    """The weights of a built-in model: a tag of it, an existing file, or ``None`` (random).

    Args:
        model: a built-in open_clip model name.
        pretrained: the tag or file (``None`` or ``""``: random weights).

    Raises:
        InvalidArgument: (``pretrained``) an unknown tag, a path where nothing is, a folder.
    """
    if pretrained is None or os.fspath(pretrained) == "":
        return None
    text = os.fspath(pretrained)
    tags = open_clip.list_pretrained_tags_by_model(model)
    if text in tags:
        return text
    if looks_like_path(text):
        try:
            path = Path(local_or_hub(text, what="weights file"))
        except FileNotFoundError as error:
            raise MissingPath("pretrained", literal(error)) from None
        if path.is_dir():
            raise InvalidValue(
                "pretrained", "{pretrained} " + literal(f"{text} is a folder, not a weights file")
            )
        return str(path)
    raise InvalidValue(
        "pretrained",
        "{pretrained} "
        + literal(
            f"{text!r} is neither a weights tag of {model} ({', '.join(tags) or 'none'}) "
            "nor an existing file ('' = random weights)"
        ),
    )


def builtin_hub_repos(model: str, weights: str | None) -> tuple[str, ...]:
    """Hub repositories a built-in model's load asks: its weights tag's, and a HF tokenizer's."""
    repos = []
    if weights is not None and not os.path.isfile(weights):
        # open_clip's hf_hub entry is "owner/name/" or "owner/name/file"
        hub_file = open_clip.get_pretrained_cfg(model, weights).get("hf_hub", "")
        if hub_file:
            repos.append(os.path.split(hub_file)[0])
    text_cfg = (open_clip.get_model_config(model) or {}).get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        repos.append(text_cfg["hf_tokenizer_name"])
    return tuple(repos)


def vision_config(source: ModelSource) -> dict | None:
    """The open_clip ``vision_cfg`` of a built-in model or a model folder, read without loading
    it; None for a hub repository (its config comes with its weights)."""
    if source.name.startswith(LOCAL_DIR):
        config = json.loads((Path(source.name[len(LOCAL_DIR) :]) / CONFIG_FILE).read_text())
        return config["model_cfg"].get("vision_cfg", {})
    if source.name.startswith(HF_HUB):
        return None
    return (open_clip.get_model_config(source.name) or {}).get("vision_cfg", {})


def check_model_hub(source: ModelSource) -> None:
    """Fail at once, saying why, when a repository of ``source`` is not cached and the hub is
    out of reach (``HF_HUB_OFFLINE``, or no connection within 5 s).

    Raises:
        common_kernels.runtime.hub.HubUnreachableError: an ``OSError`` naming the repository.
    """
    for repo in source.hub_repos:
        check_hub(repo)
