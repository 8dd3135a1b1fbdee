"""Text side: class queries, template-averaged embeddings, auxiliary-text mixing and a disk cache.

A class may have several names (synonyms); each name is a *query*. Each query (and each
auxiliary text) is embedded as the L2-normalised mean of its L2-normalised embeddings under the
80 OpenAI ImageNet templates.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from common_kernels.runtime.files import atomic_write


@cache
def imagenet_templates() -> tuple[str, ...]:
    """The 80 OpenAI ImageNet prompt templates (``"a photo of a {}."``), in CLIP's order."""
    text = resources.files("itaclip.data").joinpath("templates.json").read_text()
    return tuple(json.loads(text))


@dataclass(frozen=True)
class ClassQueries:
    """The queries (names) of a list of classes, flattened so each class's queries are adjacent.

    Args:
        names: one display name per class (its first query).
        queries: all queries, class by class.
        query_class: (Q,) int64 class index of each query.
    """

    names: tuple[str, ...]
    queries: tuple[str, ...]
    query_class: Tensor

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def segments(self) -> list[tuple[int, int]]:
        """(start, end) query range of each class."""
        counts = torch.bincount(self.query_class, minlength=self.num_classes).tolist()
        ends = torch.tensor(counts).cumsum(0).tolist()
        return [(end - count, end) for count, end in zip(counts, ends, strict=True)]


def parse_classes(classes: Sequence[str | Sequence[str]]) -> ClassQueries:
    """Class queries from names; a class is ``"cat"``, ``"person,man,woman"`` or a list of names.

    Raises:
        ValueError: empty list, an empty name, or a query used twice (within or across classes).
    """
    if isinstance(classes, str):
        raise TypeError("classes must be a list of class names, got one string")
    if len(classes) == 0:
        raise ValueError("classes must name at least one class, got an empty list")
    names, queries, owners = [], [], []
    seen: dict[str, int] = {}
    for index, item in enumerate(classes):
        parts = item.split(",") if isinstance(item, str) else list(item)
        parts = [str(part).strip() for part in parts]
        if not parts or any(not part for part in parts):
            raise ValueError(f"class {index} ({item!r}) has an empty name")
        for part in parts:
            if part in seen:
                raise ValueError(
                    f"duplicate class name {part!r}: used by class {seen[part]} and class {index}"
                )
            seen[part] = index
        names.append(parts[0])
        queries.extend(parts)
        owners.extend([index] * len(parts))
    return ClassQueries(tuple(names), tuple(queries), torch.tensor(owners, dtype=torch.int64))


@torch.no_grad()
def embed_texts(
    encode_text: Callable[[Tensor], Tensor],
    tokenizer: Callable[[list[str]], Tensor],
    texts: Sequence[str],
    templates: Sequence[str] | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Template-averaged text embeddings.

    Args:
        encode_text: open_clip ``model.encode_text``.
        tokenizer: open_clip tokenizer (list of strings -> (n, context) token ids).
        texts: the texts (class names or auxiliary texts).
        templates: format strings with one ``{}``; default the 80 ImageNet templates.
        batch_size: prompts per ``encode_text`` call.
        device: where the text tower lives.

    Returns:
        (len(texts), C) fp32 L2-normalised embeddings.
    """
    templates = tuple(templates or imagenet_templates())
    prompts = [template.format(text) for text in texts for template in templates]
    features = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        features.append(F.normalize(encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(features)  # (T * templates, C)
    per_text = per_prompt.reshape(len(texts), len(templates), -1).mean(1)  # (T, C)
    return F.normalize(per_text, dim=-1)


def mix_auxiliary(
    query_features: Tensor, aux_features: Tensor, query_class: Tensor, alpha: float, keep=()
) -> Tensor:
    """``(1 - alpha) q + alpha aux[class(q)]``, not renormalised; ``keep`` classes are unchanged.

    Args:
        query_features: (Q, C) query embeddings.
        aux_features: (num_classes, C) auxiliary-text embeddings.
        query_class: (Q,) class index of each query.
        alpha: auxiliary share in [0, 1].
        keep: class indices whose queries keep their original features (the background).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mixed = (1 - alpha) * query_features + alpha * aux_features[query_class]  # (Q, C)
    keep_t = torch.as_tensor(list(keep), dtype=query_class.dtype, device=query_class.device)
    kept = torch.isin(query_class, keep_t)  # (Q,)
    return torch.where(kept[:, None], query_features, mixed)


class TextEmbeddingCache:
    """On-disk cache of text embeddings keyed by (model identity, templates, texts).

    Args:
        directory: cache folder; entries are ``<sha256>.safetensors`` written atomically.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(model_id: str, texts: Sequence[str], templates: Sequence[str]) -> str:
        """Hex digest identifying the embeddings of ``texts`` by model ``model_id``."""
        payload = json.dumps([model_id, list(templates), list(texts)], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def get_or_compute(
        self,
        model_id: str,
        texts: Sequence[str],
        templates: Sequence[str],
        compute: Callable[[], Tensor],
    ) -> Tensor:
        """Cached embeddings of ``texts``, computing and storing them on a miss."""
        path = self.path(self.key(model_id, texts, templates))
        if path.exists():
            return load_file(path)["embeddings"]
        embeddings = compute().float().cpu().contiguous()
        with atomic_write(path, make_parents=True) as temp:
            save_file({"embeddings": embeddings}, temp)
        return embeddings


def model_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's parameter names, shapes and values (identifies random weights too)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
