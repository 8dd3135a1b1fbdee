"""Import of the released Vitron checkpoint (LLaVA format) into a :class:`VitronModel`.

The release is three folders: the base (a LLaVA-format Vicuna: ``config.json`` with the
``mm_*`` keys, the LLM's weights as one file or shards with their index, the tokenizer), an
optional LoRA folder (``adapter_config.json``, ``adapter_model.bin``,
``non_lora_trainables.bin`` holding the projector and the region extractor, its own
``config.json``) and the image tower (LanguageBind_Image, a CLIP ViT-L/14 layout under
``vision_model.*``). :func:`check_official` checks every file against what it must hold,
reading configs and the small adapter only, and raises one line naming the file and what was
expected; :func:`load_official` then reads the weights once, merges the LoRA update
``W + (alpha / r) B A`` (``alpha / sqrt(r)`` with rsLoRA) and maps every tensor onto the
model's parts. What the release lacks (signal heads, the synergy module) starts at seeded
random values; videos are refused (the LanguageBind video tower is not mapped).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from common_kernels.runtime.errors import InvalidValue, literal
from vitron.models.config import OPENAI_MEAN, OPENAI_STD, RegionConfig, VisionConfig

INDEX_NAMES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")
SINGLE_NAMES = ("pytorch_model.bin", "model.safetensors")
ADAPTER_NAMES = ("adapter_model.bin", "adapter_model.safetensors")
NON_LORA_NAME = "non_lora_trainables.bin"
PROJECTOR_TYPES = ("mlp2x_gelu",)
LLAMA_TYPES = ("llava", "llava_llama", "llama")
# the vicuna_v1 system sentence of FastChat / LLaVA (Apache-2.0); the release's own template
# adds sentences of its own: pass them as ``system_prompt`` (see docs/official-checkpoint.md)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
OFFICIAL_REGION_TOKEN = "<objs>"  # the release's region placeholder
NO_VIDEO = (
    "an imported official checkpoint has no mapped video tower (the release encodes videos "
    "with LanguageBind_Video_merge, whose temporal attention this package does not implement); "
    "give its frames as images instead"
)
_SHARD = re.compile(r".*-\d{5}-of-\d{5}\.(bin|safetensors)$")
_SHARD_PARTS = re.compile(r"(.*)-(\d{5})-of-(\d{5})\.(bin|safetensors)")
_PROJECTOR = {"model.mm_projector.0.": "fc1.", "model.mm_projector.2.": "fc2."}
_REGION = {
    "model.region_extractor.region_linear.layers.0.": "mlp.0.",
    "model.region_extractor.region_linear.layers.1.": "mlp.2.",
    "model.region_extractor.region_linear.layers.2.": "mlp.4.",
    "model.region_extractor.loc_encoder.loc_encoder.0.": "location.0.",
    "model.region_extractor.loc_encoder.loc_encoder.2.": "location.2.",
}
_TOWERS = ("model.image_tower.", "model.video_tower.", "model.vision_tower.")


def _fail(argument: str, path: Path | str, what: str) -> InvalidValue:
    """One line ``{argument} PATH: WHAT`` (the CLI prints the argument as its flag)."""
    return InvalidValue(argument, f"{{{argument}}} {literal(str(path))}: {literal(what)}")


def _read_json(path: Path, argument: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _fail(argument, path, f"is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise _fail(argument, path, "is not a JSON object")
    return data


def _weight_files(folder: Path, argument: str) -> list[Path]:
    """The weight files of an LLaVA-format folder: an index's shards, else one file, else
    every shard present (``NAME-0000K-of-0000N``; a gap in the numbering is a missing shard)."""

    for index_name in INDEX_NAMES:
        index = folder / index_name
        if index.exists():
            weight_map = _read_json(index, argument).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise _fail(argument, index, "has no weight_map (tensor name -> shard file)")
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                if not (folder / shard).is_file():
                    raise _fail(argument, folder / shard, f"missing shard (listed in {index_name})")
            return [folder / shard for shard in shards]
    for name in SINGLE_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    shards = sorted(p.name for p in folder.iterdir() if _SHARD.match(p.name))
    if shards:  # no index: every shard there is read (a missing tensor is found after)
        for name in _numbered_gaps(shards):
            raise _fail(argument, folder / name, "missing shard (its numbering says it exists)")
        return [folder / shard for shard in shards]
    raise _fail(
        argument, folder,
        f"no weights; expected {' or '.join(INDEX_NAMES)} with its shards, or "
        f"{' or '.join(SINGLE_NAMES)}",
    )  # fmt: skip


def _numbered_gaps(shards: list[str]) -> list[str]:
    """The names ``PREFIX-0000K-of-0000N.EXT`` missing from ``shards`` for each prefix and N."""
    found = {}
    for name in shards:
        head, number, total, ext = _SHARD_PARTS.fullmatch(name).groups()
        found.setdefault((head, total, ext), set()).add(int(number))
    return [
        f"{head}-{k:05d}-of-{total}.{ext}"
        for (head, total, ext), numbers in sorted(found.items())
        for k in range(1, int(total) + 1)
        if k not in numbers
    ]


def read_weights(path: Path) -> dict[str, Tensor]:
    """Every tensor of one ``.bin`` (loaded without executing pickled code) or
    ``.safetensors`` file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _llama_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear layer a LoRA may target, from the LLaMA config alone."""
    hidden, inner = int(config["hidden_size"]), int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = int(config.get("num_key_value_heads") or heads) * head_dim
    return {
        "q_proj": (heads * head_dim, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden),
        "o_proj": (hidden, heads * head_dim), "gate_proj": (inner, hidden),
        "up_proj": (inner, hidden), "down_proj": (hidden, inner),
    }  # fmt: skip


def _lora_target(key: str) -> tuple[str, str] | None:
    """``base_model.model.X.lora_A[.default].weight`` -> (``X.weight``, ``"A"``)."""
    found = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight", key)
    return None if found is None else (found.group(1) + ".weight", found.group(2))


@dataclass
class LoraUpdate:
    """A checked LoRA adapter: per target weight, (A (r, in), B (out, r)) and the scale.

    Args:
        pairs: target weight name (as in the LLM) -> (A, B).
        scale: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
    """

    pairs: dict[str, tuple[Tensor, Tensor]]
    scale: float

    def apply(self, state: dict[str, Tensor]) -> None:
        """``state[name] += scale * B @ A`` for every target, computed in float32."""
        for name, (a, b) in self.pairs.items():
            weight = state[name]
            delta = self.scale * (b.float() @ a.float())  # (out, r) @ (r, in) -> (out, in)
            state[name] = (weight.float() + delta).to(weight.dtype)


def _check_adapter(folder: Path, llm_config: dict[str, Any]) -> LoraUpdate:
    """Read ``adapter_config.json`` and the adapter, and check every pair fits the LLM."""
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise _fail("lora", config_path, "missing (the LoRA's r, lora_alpha, target_modules)")
    config = _read_json(config_path, "lora")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
        raise _fail("lora", config_path, f"needs r >= 1 and lora_alpha; got r={rank!r}")
    adapter = next((folder / n for n in ADAPTER_NAMES if (folder / n).is_file()), None)
    if adapter is None:
        raise _fail("lora", folder / ADAPTER_NAMES[0], "missing (the LoRA's A and B matrices)")
    halves: dict[str, dict[str, Tensor]] = {}
    for key, tensor in read_weights(adapter).items():
        target = _lora_target(key)
        if target is None:
            raise _fail("lora", adapter, f"holds {key}, not a LoRA A/B matrix of the LLM")
        halves.setdefault(target[0], {})[target[1]] = tensor
    if not halves:
        raise _fail("lora", adapter, "holds no LoRA matrices")
    shapes = _llama_shapes(llm_config)
    layers = int(llm_config["num_hidden_layers"])
    pairs = {}
    for name, half in sorted(halves.items()):
        found = re.fullmatch(r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.weight", name)
        if found is None or int(found.group(1)) >= layers or found.group(2) not in shapes:
            raise _fail("lora", adapter, f"targets {name}, which the {layers}-layer LLM lacks")
        if set(half) != {"A", "B"}:
            raise _fail("lora", adapter, f"{name} has lora_{''.join(half)} only; expected A and B")
        out, inner = shapes[found.group(2)]
        a, b = half["A"], half["B"]
        if tuple(a.shape) != (rank, inner) or tuple(b.shape) != (out, rank):
            raise _fail(
                "lora", adapter,
                f"{name}: A {tuple(a.shape)}, B {tuple(b.shape)} do not fit the LLM's "
                f"({out}, {inner}) weight with r={rank}; expected A ({rank}, {inner}), "
                f"B ({out}, {rank})",
            )  # fmt: skip
        pairs[name] = (a, b)
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return LoraUpdate(pairs, float(scale))


@dataclass
class TowerFiles:
    """A checked image tower folder: its CLIP vision config, weight file and normalisation."""

    folder: Path
    vision_config: dict[str, Any]
    weights: Path
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD


def _check_tower(folder: Path) -> TowerFiles:
    """The image tower's config: LanguageBind_Image (``vision_config`` + ``vision_model.*``) or
    a transformers CLIP folder (its weights are checked by :func:`_tower_weights`)."""
    from transformers import CLIPVisionConfig

    config = (
        _read_json(folder / "config.json", "vision_tower")
        if (folder / "config.json").is_file()
        else None
    )
    if config is None:
        raise _fail("vision_tower", folder / "config.json", "missing (the tower's architecture)")
    vision = config.get("vision_config", config if "vision_config" not in config else None)
    if not isinstance(vision, dict) or "hidden_size" not in vision:
        raise _fail(
            "vision_tower", folder / "config.json",
            "has no CLIP vision config (a vision_config with hidden_size, or a CLIP vision one)",
        )  # fmt: skip
    if vision.get("add_time_attn"):
        raise _fail(
            "vision_tower", folder, "is a video tower (add_time_attn); expected an image one"
        )
    known = set(CLIPVisionConfig().to_dict())
    kept = {k: v for k, v in vision.items() if k in known and k not in ("model_type",)}
    mean, std = OPENAI_MEAN, OPENAI_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        data = _read_json(pre, "vision_tower")
        mean = tuple(data.get("image_mean", mean))
        std = tuple(data.get("image_std", std))
    return TowerFiles(folder, kept, folder / SINGLE_NAMES[0], mean, std)


def _tower_weights(tower: TowerFiles) -> None:
    """Point ``tower.weights`` at its one weight file (``pytorch_model.bin`` or
    ``model.safetensors``)."""
    weights = next((tower.folder / n for n in SINGLE_NAMES if (tower.folder / n).is_file()), None)
    if weights is None:
        raise _fail(
            "vision_tower", tower.folder, f"no weights; expected {' or '.join(SINGLE_NAMES)}"
        )
    tower.weights = weights


def tower_state(files: TowerFiles) -> dict[str, Tensor]:
    """The tower's ``vision_model.*`` tensors, that prefix dropped; a LoRA the tower was
    saved with (peft's ``base_model.model`` / ``base_layer`` / ``lora_A`` names) is merged
    with the tower config's ``lora_alpha / lora_r``."""
    rank = int(files.vision_config.get("lora_r", 0) or 0)
    raw = read_weights(files.weights)
    state: dict[str, Tensor] = {}
    halves: dict[str, dict[str, Tensor]] = {}
    for key, tensor in raw.items():
        if not key.startswith("vision_model."):
            continue  # the text tower, projections and logit scale are not used
        name = key.removeprefix("vision_model.")
        name = name.replace("base_model.model.", "").replace(".base_layer.", ".")
        found = re.fullmatch(r"(.+)\.lora_([AB])(?:\.default)?\.weight", name)
        if found:
            halves.setdefault(found.group(1) + ".weight", {})[found.group(2)] = tensor
        else:
            state[name] = tensor
    if halves:
        config = _read_json(files.folder / "config.json", "vision_tower")
        vision = config.get("vision_config", config)
        rank = int(vision.get("lora_r") or 0)
        if rank < 1:
            raise _fail("vision_tower", files.weights, "holds LoRA matrices but lora_r is 0")
        update = LoraUpdate({k: (h["A"], h["B"]) for k, h in halves.items()},
                            float(vision.get("lora_alpha", rank)) / rank)  # fmt: skip
        update.apply(state)
    return state


@dataclass
class OfficialFiles:
    """Every checked file of an import (:func:`check_official`).

    Args:
        base: the base folder.
        config: the LLaVA config (the LoRA folder's when given, as the release loads it).
        weights: the base's weight files.
        lora: the checked adapter, or ``None``.
        non_lora: ``non_lora_trainables.bin``, or ``None``.
        tower: the checked image tower.
    """

    base: Path
    config: dict[str, Any]
    weights: list[Path]
    lora: LoraUpdate | None
    non_lora: Path | None
    tower: TowerFiles
    notes: list[str] = field(default_factory=list)

    @property
    def llm_config(self) -> dict[str, Any]:
        """The LLaMA config (``mm_*`` keys and the LLaVA model type dropped)."""
        drop = ("mm_", "image_", "video_", "tune_", "freeze_", "use_mm", "architectures")
        kept = {k: v for k, v in self.config.items() if not k.startswith(drop)}
        return {**kept, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}

    def vision_config(self) -> VisionConfig:
        """The package's tower config from the tower's CLIP config and the ``mm_*`` keys."""
        pad = self.config.get("image_aspect_ratio", "pad") == "pad"
        return VisionConfig(
            "transformers", self.tower.vision_config, int(self.config["mm_vision_select_layer"]),
            "pad" if pad else "center_crop", self.tower.mean, self.tower.std,
        )  # fmt: skip

    def region_config(self) -> RegionConfig:
        return RegionConfig(hidden=int(self.config["hidden_size"]), style="official")


def check_official(
    base: str | Path, lora: str | Path | None = None, vision_tower: str | Path | None = None
) -> OfficialFiles:
    """Check the release's files before any weight loads (the adapter is read: it is small).

    Each part is a local folder or a hub id (:mod:`vitron.models.official_sources`): every hub
    id given is checked to be reachable or cached first, then the small files are fetched and
    checked, and the weights are fetched only after (the index's shards, one format).

    Args:
        base: the base folder or hub id (``Vitron/vitron-base``).
        lora: the LoRA folder or hub id (``Vitron/vitron-lora``), or ``None``.
        vision_tower: the LanguageBind_Image folder or hub id; ``None``: the config's
            ``mm_image_tower`` (``LanguageBind/LanguageBind_Image`` in the release).

    Raises:
        InvalidValue: one line naming the argument, the file and what was expected.
        HubUnreachable: a hub id neither cached nor reachable (an ``OSError``), named.
    """
    from vitron.models.official_sources import (
        BASE_FILES,
        LORA_FILES,
        TOWER_FILES,
        official_source,
    )

    # every part given is resolved (a hub id: reachable or cached) before anything is fetched
    base_what = "the LLaVA-format base folder (config.json, weights)"
    base_source = official_source(base, "base", base_what)
    lora_source = (
        None if lora is None
        else official_source(lora, "lora", "the LoRA folder (adapter_config.json, ...)")
    )  # fmt: skip
    tower_what = "the LanguageBind_Image (or CLIP) tower folder"
    tower_source = (
        None if vision_tower is None
        else official_source(vision_tower, "vision_tower", tower_what)
    )  # fmt: skip
    folder = base_source.fetch(BASE_FILES)
    if not (folder / "config.json").is_file():
        raise _fail("base", folder / "config.json", "missing (the LLaVA config with mm_* keys)")
    config = _read_json(folder / "config.json", "base")
    lora_folder = None if lora_source is None else lora_source.fetch(LORA_FILES)
    if lora_folder is not None and (lora_folder / "config.json").is_file():
        config = {**config, **_read_json(lora_folder / "config.json", "lora")}  # as the release
    source = (
        lora_folder / "config.json"
        if lora_folder and (lora_folder / "config.json").is_file()
        else folder / "config.json"
    )
    if config.get("model_type") not in LLAMA_TYPES:
        raise _fail("base", source, f"model_type {config.get('model_type')!r}; expected "
                    f"one of {', '.join(LLAMA_TYPES)} (a LLaVA LLaMA)")  # fmt: skip
    for key in ("mm_hidden_size", "mm_vision_select_layer", "hidden_size"):
        if key not in config:
            raise _fail("base", source, f"lacks {key} (a LLaVA config's mm_* keys)")
    checks = (
        ("mm_projector_type", "mlp2x_gelu", PROJECTOR_TYPES),
        ("mm_vision_select_feature", "patch", ("patch",)),
        ("mm_use_im_start_end", False, (False,)),
    )
    for key, default, accepted in checks:
        if config.get(key, default) not in accepted:
            raise _fail("base", source, f"{key} {config.get(key)!r} is not supported; "
                        f"expected {' or '.join(map(repr, accepted))}")  # fmt: skip
    if not any((folder / n).is_file() for n in ("tokenizer.model", "tokenizer.json")):
        raise _fail("base", folder / "tokenizer.model", "missing (the LLaMA tokenizer)")
    if tower_source is None:
        named = config.get("mm_image_tower") or config.get("mm_vision_tower")
        if not named:
            raise _fail("vision_tower", source, "names no mm_image_tower; give the tower")
        tower_source = official_source(named, "vision_tower", tower_what)
    tower = _check_tower(tower_source.fetch(TOWER_FILES))
    if int(tower.vision_config["hidden_size"]) != int(config["mm_hidden_size"]):
        raise _fail(
            "vision_tower", tower.folder / "config.json",
            f"hidden_size {tower.vision_config['hidden_size']} does not fit the projector's "
            f"mm_hidden_size {config['mm_hidden_size']}",
        )  # fmt: skip
    layers = int(tower.vision_config.get("num_hidden_layers", 12))
    if not -layers <= int(config["mm_vision_select_layer"]) <= layers:
        raise _fail("base", source, f"mm_vision_select_layer {config['mm_vision_select_layer']}"
                    f" is outside the {layers}-block tower")  # fmt: skip
    # the weights: only now, and only the files the format needs
    weights = _weight_files(_fetch_weights(base_source, folder), "base")
    update = non_lora = None
    if lora_source is not None:
        lora_folder = lora_source.fetch_first(ADAPTER_NAMES[::-1])  # safetensors first
        lora_folder = lora_source.fetch([NON_LORA_NAME])
        update = _check_adapter(lora_folder, config)
        non_lora = lora_folder / NON_LORA_NAME
        if not non_lora.is_file():
            raise _fail("lora", non_lora, "missing (the projector and region extractor weights)")
    tower.folder = tower_source.fetch_first(SINGLE_NAMES[::-1])  # safetensors first
    _tower_weights(tower)
    return OfficialFiles(folder, config, weights, update, non_lora, tower)


def _fetch_weights(source, folder: Path) -> Path:
    """The base's weights from the hub (a local folder: nothing to fetch): the shards its
    index lists, else one single file (safetensors first)."""
    if source.repo_id is None:
        return folder
    for index_name in INDEX_NAMES:
        if (folder / index_name).is_file():
            weight_map = _read_json(folder / index_name, "base").get("weight_map")
            if isinstance(weight_map, dict) and weight_map:
                return source.fetch(sorted(set(map(str, weight_map.values()))))
    return source.fetch_first(SINGLE_NAMES[::-1])


def tokenizer_options(folder: Path) -> dict[str, Any]:
    """What the release's tokenizer is loaded with: a LLaMA tokenizer's ``legacy`` as its
    ``tokenizer_config.json`` says, True when it says nothing (transformers 4.31, which the
    release pins, took a missing ``legacy`` for True: a word-start ``▁`` after every special
    token such as ``</s>``; transformers 5 takes it for False)."""
    path = folder / "tokenizer_config.json"
    config = _read_json(path, "base") if path.is_file() else {}
    llama = "llama" in str(config.get("tokenizer_class", "")).lower() or (
        (folder / "tokenizer.model").is_file() and not (folder / "tokenizer.json").is_file()
    )
    if not llama:
        return {}
    return {"legacy": True if config.get("legacy") is None else bool(config["legacy"])}


def split_state(state: dict[str, Tensor], files: OfficialFiles) -> dict[str, dict[str, Tensor]]:
    """Route LLaVA tensor names to the parts: ``llm``, ``projector``, ``region_encoder``.

    Raises:
        InvalidValue: projector or region extractor weights missing.
    """
    parts: dict[str, dict[str, Tensor]] = {"llm": {}, "projector": {}, "region_encoder": {}}
    for key, tensor in state.items():
        if key.startswith(_TOWERS):
            continue  # the towers come from their own folders
        for table, part in ((_PROJECTOR, "projector"), (_REGION, "region_encoder")):
            prefix = next((p for p in table if key.startswith(p)), None)
            if prefix is not None:
                parts[part][table[prefix] + key[len(prefix) :]] = tensor
                break
        else:
            parts["llm"][key] = tensor
    where = f"{files.base} or {files.non_lora}" if files.non_lora else str(files.base)
    for part, table in (("projector", _PROJECTOR), ("region_encoder", _REGION)):
        if len(parts[part]) != 2 * len(table):
            raise _fail("base", where, f"has {len(parts[part])} of the {2 * len(table)} "
                        f"{' / '.join(p + '{weight,bias}' for p in table)} tensors")  # fmt: skip
    return parts


def official_state(files: OfficialFiles) -> dict[str, Tensor]:
    """The base's tensors with ``non_lora_trainables.bin`` over them and the LoRA merged."""
    state: dict[str, Tensor] = {}
    for path in files.weights:
        state.update(read_weights(path))
    if files.non_lora is not None:
        for key, tensor in read_weights(files.non_lora).items():
            # saved from the peft wrapper: base_model.model.model.mm_projector... -> model.mm_...
            state[key.removeprefix("base_model.").removeprefix("model.")
                  if key.startswith("base_model.model.") else key] = tensor  # fmt: skip
    if files.lora is not None:
        missing = sorted(set(files.lora.pairs) - set(state))
        if missing:
            raise _fail("base", files.base, f"lacks {missing[0]}, a weight the LoRA targets")
        files.lora.apply(state)
    return state


def load_official(
    model_class: type,
    files: OfficialFiles,
    *,
    dtype: torch.dtype | None = None,
    system_prompt: str | None = None,
    seed: int = 0,
):
    """A ``model_class`` (:class:`~vitron.models.vitron.VitronModel`, passed in by
    :meth:`VitronModel.from_official`, which this module does not import) from the release's
    files, as :func:`check_official` returns them."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from vitron.models.config import VitronConfig
    from vitron.models.loading import default_dtype, empty_weights
    from vitron.models.tokens import add_vitron_tokens
    from vitron.models.vision import VisionTower

    options = tokenizer_options(files.base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(files.base), **options)
    except (OSError, ValueError, ImportError) as err:
        need = "tokenizer.model needs `pip install 'vitron[official]'`: sentencepiece, protobuf"
        raise _fail("base", files.base, f"the tokenizer does not load ({need}): {err}") from None
    dtype = dtype or torch.get_default_dtype()
    parts = split_state(official_state(files), files)
    llm_config = AutoConfig.for_model(**files.llm_config)
    with empty_weights(), default_dtype(dtype):
        llm = AutoModelForCausalLM.from_config(llm_config)
    expected = set(llm.state_dict())
    unknown = sorted(set(parts["llm"]) - expected)
    missing = sorted(expected - set(parts["llm"]))
    if llm_config.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if unknown or missing:
        name, what = (unknown[0], "is not a tensor of") if unknown else (missing[0], "lacks")
        raise _fail("base", files.base, f"{what} the LLaMA of config.json: {name} "
                    f"({len(unknown)} unknown, {len(missing)} missing)")  # fmt: skip
    llm.load_state_dict({k: v.to(dtype) for k, v in parts["llm"].items()}, assign=True)
    llm.tie_weights()
    vision = files.vision_config()
    with default_dtype(dtype):
        tower = VisionTower(vision)
    # CLIPVisionModel names its tensors with or without vision_model. (transformers versions)
    prefix = (
        "vision_model."
        if any(k.startswith("vision_model.") for k in tower.model.state_dict())
        else ""
    )
    tower.model.load_state_dict(
        {prefix + k: v.to(dtype) for k, v in tower_state(files.tower).items()}
    )
    positions = int(files.config.get("max_position_embeddings", 2048))
    sizes = {"max_length": positions, "video_frames": 1, "video_pool": 1}  # videos: refused
    # the release's placeholders: <image>, and <objs> for a region (so that the <region> of
    # its replies' tags stays the text it wrote); its chunked tokenisation (official_prompt)
    layout = {"region_token": OFFICIAL_REGION_TOKEN, "prompt_layout": "official",
              "tokenizer_options": options}  # fmt: skip
    probe = VitronConfig(vision=vision, llm={}, region=files.region_config(), **sizes, **layout)
    add_vitron_tokens(tokenizer, llm, probe)  # the placeholders and the signal token
    config = VitronConfig(
        vision=vision, llm=json.loads(json.dumps(llm.config.to_dict(), default=str)),
        region=files.region_config(), projector_hidden=None, template="vicuna_v1", **sizes,
        system_prompt=VICUNA_SYSTEM if system_prompt is None else system_prompt,
        video_support=NO_VIDEO, **layout,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]), default_dtype(dtype):
        torch.manual_seed(seed)  # the parts the release lacks: signal heads, synergy module
        model = model_class(config, tokenizer, llm=llm, vision=tower)
    model.projector.load_state_dict({k: v.to(dtype) for k, v in parts["projector"].items()})
    model.region_encoder.load_state_dict(
        {k: v.to(dtype) for k, v in parts["region_encoder"].items()}
    )
    return model.eval()
