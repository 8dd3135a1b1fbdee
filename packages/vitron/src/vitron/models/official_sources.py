"""Where the release's three parts come from: a local folder, or a hub repository fetched with
exactly the files the format needs (``Vitron/vitron-base``, ``Vitron/vitron-lora``,
``LanguageBind/LanguageBind_Image``).

A name that looks like a path (``./DIR``, ``/DIR``, ``~/DIR``, an existing folder, a
``Path``) is a local folder. A hub id ``owner/name`` is checked first, for every part given,
before anything is fetched (:func:`vitron.models.sources.reachable_hub_id`: with
``HF_HUB_OFFLINE`` set, or no route to the hub within 5 s, and no cached copy, one line naming
the id and what to do); then :meth:`OfficialSource.fetch` asks ``huggingface_hub.
snapshot_download`` for the small files first (configs, index, tokenizer), and for the weights
only once those are checked (the shards the index lists, one single-file format). Under
``HF_HUB_OFFLINE`` the local cache is read and nothing is asked (the cache folder and the offline
switch are read when the call is made, not when huggingface_hub was imported).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common_kernels.runtime.errors import InvalidValue, literal
from common_kernels.runtime.hub import hub_cache_dir, hub_offline, is_hub_id, looks_like_path
from vitron.models.sources import HubUnreachable, reachable_hub_id

# the small files of each part: fetched before any weight, all that the checks read
BASE_FILES = (
    "config.json", "generation_config.json", "pytorch_model.bin.index.json",
    "model.safetensors.index.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json",
)  # fmt: skip
LORA_FILES = ("config.json", "adapter_config.json")
TOWER_FILES = ("config.json", "preprocessor_config.json")
ADVICE = "download it on a machine with network access, or give a local folder (./DIR)"


@dataclass
class OfficialSource:
    """One part of the release: a local folder or a hub repository.

    Args:
        argument: the API's argument (``"base"``, ``"lora"``, ``"vision_tower"``).
        folder: the local folder, or ``None`` until a hub repository is first fetched.
        repo_id: the hub id, or ``None`` for a local folder.
    """

    argument: str
    folder: Path | None
    repo_id: str | None = None

    def fetch(self, names: Sequence[str]) -> Path:
        """The folder, after fetching ``names`` from the hub (those the repository has; a local
        folder: nothing is fetched)."""
        if self.repo_id is None:
            return self.folder
        from huggingface_hub import snapshot_download

        offline = hub_offline()
        try:
            found = snapshot_download(
                self.repo_id, allow_patterns=list(names), cache_dir=hub_cache_dir(),
                local_files_only=offline,
            )  # fmt: skip
        except (OSError, ValueError) as err:  # HfHubHTTPError, LocalEntryNotFoundError: OSError
            why = " ".join(str(err).split())
            where = "in the local hub cache (HF_HUB_OFFLINE is set)" if offline else "from the hub"
            raise HubUnreachable(
                self.argument,
                f"cannot fetch {{{self.argument}}} {literal(self.repo_id)}'s "
                f"{literal(', '.join(names))} {where}: {literal(why)}; {ADVICE}",
            ) from None
        self.folder = Path(found)
        return self.folder

    def fetch_first(self, names: Sequence[str]) -> Path:
        """The folder, after fetching the first of ``names`` the repository has (one weight
        format, not every format it holds)."""
        for name in names:
            folder = self.fetch([name])
            if (folder / name).is_file():
                break
        return self.folder


def official_source(name: str | os.PathLike, argument: str, what: str) -> OfficialSource:
    """The local folder or the reachable hub repository that ``name`` means (nothing fetched).

    Args:
        name: a folder or a hub id.
        argument: the API's argument, named in the messages.
        what: what the folder holds, for the message of a missing one.

    Raises:
        InvalidValue: a missing folder, or a name that is neither a path nor ``owner/name``.
        HubUnreachable: a hub id not cached while the hub is out of reach (an ``OSError``).
    """
    head = f"{{{argument}}} {literal(os.fspath(name))}"
    if looks_like_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise InvalidValue(argument, f"{head}: no such folder; expected {literal(what)}")
        return OfficialSource(argument, folder)
    if not is_hub_id(os.fspath(name)):
        raise InvalidValue(
            argument,
            f"{head}: neither a folder nor a hub id owner/name (a local folder is written ./DIR); "
            f"expected {literal(what)}",
        )
    return OfficialSource(argument, None, reachable_hub_id(os.fspath(name), argument))
