"""The JSONL conversation format and its dataset.

One JSON object per line::

    {"id": "0007",
     "images": ["img/0007.png"], "videos": ["vid/0007.gif"],
     "regions": [{"image": 0, "box": [12, 30, 80, 96]}],
     "conversations": [
       {"from": "human", "value": "<image>\\nSegment the dog in <region> and make it a cat."},
       {"from": "gpt", "value": "Segmenting, then repainting.",
        "calls": {"version": 1, "calls": [...]}},
       {"from": "results", "value": "[seg] segment_image ok: ..."},
       {"from": "gpt", "value": "Done: the dog is now a cat."}],
     "signal_targets": "targets/0007.safetensors"}

``from`` is ``human``/``user``, ``gpt``/``assistant`` or ``results``. Paths are relative to the
JSONL file's folder (or ``media_root``). ``regions`` take ``box`` (pixels, or [0, 1] when all
four values are), ``points`` + ``width`` (strokes) or ``mask`` (an image path). ``calls`` follow
the invocation schema; ``signal_targets`` (stage 3) is a safetensors file holding one tensor per
call id: the specialist conditioning that call's signal embedding should match. Instead, the
targets of a whole file can come from a ``targets.json`` index written by ``vitron
build-targets`` (:mod:`vitron.training.targets`), keyed by each record's ``id`` (or ``line N``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor
from torch.utils.data import Dataset

from common_kernels.runtime.errors import InvalidValue, literal
from vitron.invocations import InputCounts, InvocationError, parse_invocation
from vitron.io import json_lines, load_image, load_video, to_tensor
from vitron.processing import Message, Sample, VitronProcessor
from vitron.regions import Mask, Region, RegionError, shape_from_json

ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "results": "results",
}
RECORD_KEYS = ("id", "images", "videos", "regions", "conversations", "signal_targets", "task")
TARGETS_FORMAT = 1


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (blank lines skipped), with line numbers in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} does not exist")

    def bad_line(number: int, err: json.JSONDecodeError) -> ValueError:
        return ValueError(f"{path}:{number}: not valid JSON ({err})")

    records = []
    for number, record in json_lines(path.read_text(encoding="utf-8").splitlines(), bad_line):
        if not isinstance(record, dict) or "conversations" not in record:
            raise ValueError(f"{path}:{number}: a record is an object with 'conversations'")
        unknown = sorted(set(record) - set(RECORD_KEYS))
        if unknown:
            raise ValueError(
                f"{path}:{number}: unknown keys {unknown} (allowed: {', '.join(RECORD_KEYS)})"
            )
        record["_line"] = number
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def record_files(record: dict[str, Any]) -> list[tuple[str, str]]:
    """``(field, path)`` of every file a record names: images, videos (GIF or frame folder),
    region masks and its ``signal_targets``."""
    regions = record.get("regions", [])
    found = [(f"images[{k}]", p) for k, p in enumerate(record.get("images", []))]
    found += [(f"videos[{k}]", p) for k, p in enumerate(record.get("videos", []))]
    found += [
        (f"regions[{k}].mask", r["mask"])
        for k, r in enumerate(regions)
        if isinstance(r, dict) and isinstance(r.get("mask"), str)
    ]
    if "signal_targets" in record:
        found.append(("signal_targets", record["signal_targets"]))
    return [(name, str(p)) for name, p in found]


def check_media(path: str | Path, argument: str = "data") -> list[dict[str, Any]]:
    """Every file a JSONL's records name exists (:func:`record_files`), checked before
    training starts instead of at its batch.

    Args:
        path: the JSONL file (media paths are relative to its folder).
        argument: the API's argument that gave it (``data``, ``val_data``).

    Returns:
        The records (:func:`read_records`).

    Raises:
        ValueError: a record that does not parse, or a missing file (``FILE:LINE: ...``).
    """
    path = Path(path)
    try:
        records = read_records(path)
    except ValueError as err:
        raise InvalidValue(argument, f"{{{argument}}} {literal(err)}") from None
    for record in records:
        for field_name, relative in record_files(record):
            if not (path.parent / relative).exists():
                raise InvalidValue(
                    argument,
                    f"{{{argument}}} {literal(path)}:{literal(record['_line'])}: "
                    f"{literal(field_name)} "
                    f"{literal(relative)} does not exist (paths are relative to "
                    f"{literal(path.parent)})",
                )
    return records


def record_key(record: dict[str, Any]) -> str:
    """The record's key in a targets index: its ``id``, else ``line N``."""
    return str(record["id"]) if "id" in record else f"line {record['_line']}"


def record_counts(record: dict[str, Any]) -> InputCounts:
    """The inputs a record's calls may refer to, from its lists (no media is read)."""
    regions = record.get("regions", [])
    return InputCounts(
        len(record.get("images", [])),
        len(record.get("videos", [])),
        region_images=tuple(int(r.get("image", 0)) for r in regions),
    )


class TargetIndex:
    """Reader of a ``targets.json`` index and its tensors (``vitron build-targets``).

    Args:
        path: the index.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"signal targets index {self.path} does not exist")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path} is not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != TARGETS_FORMAT:
            raise ValueError(
                f"{self.path} is not a signal targets index of format {TARGETS_FORMAT} "
                "(written by vitron build-targets)"
            )
        self.records: dict[str, dict[str, dict[str, Any]]] = data["records"]
        self.tensors_path = self.path.parent / data["tensors"]
        if not self.tensors_path.is_file():
            raise FileNotFoundError(f"{self.path}: its tensors {self.tensors_path} do not exist")

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def targets(self, key: str) -> dict[str, Tensor]:
        """Call id -> target of the record ``key``."""
        entries = self.records[key]
        with safe_open(str(self.tensors_path), framework="pt") as tensors:
            return {call_id: tensors.get_tensor(e["tensor"]) for call_id, e in entries.items()}


def record_messages(record: dict[str, Any], counts: InputCounts, where: str) -> list[Message]:
    """The record's conversation as messages (calls parsed and checked)."""
    messages = []
    for k, turn in enumerate(record["conversations"]):
        role = ROLE_NAMES.get(turn.get("from"))
        if role is None:
            raise ValueError(
                f"{where}: conversations[{k}].from must be one of {sorted(ROLE_NAMES)}"
            )
        invocation = None
        if "calls" in turn:
            if role != "assistant":
                raise ValueError(
                    f"{where}: conversations[{k}] has calls but is not an assistant turn"
                )
            try:
                invocation = parse_invocation(turn["calls"], counts)
            except InvocationError as err:
                raise ValueError(f"{where}: conversations[{k}].calls: {err}") from None
        messages.append(Message(role, str(turn.get("value", "")), invocation))
    if not any(m.role == "assistant" for m in messages):
        raise ValueError(f"{where}: the conversation has no assistant turn to learn from")
    return messages


class ConversationDataset(Dataset):
    """Samples (with labels) of a JSONL conversation file.

    Args:
        path: the JSONL file.
        processor: the model's processor (with the template of the stage).
        media_root: folder the media paths are relative to (default: the JSONL's folder).
        signal_targets: a ``targets.json`` index of this file's stage-3 targets.
    """

    def __init__(
        self,
        path: str | Path,
        processor: VitronProcessor,
        media_root: str | Path | None = None,
        signal_targets: str | Path | None = None,
    ):
        self.path = Path(path)
        self.records = read_records(self.path)
        self.processor = processor
        self.root = Path(media_root) if media_root is not None else self.path.parent
        self.targets = None if signal_targets is None else TargetIndex(signal_targets)
        if self.targets is not None:
            self.check_targets(self.targets)

    def check_targets(self, index: TargetIndex) -> None:
        """The index must be of this file: its records exist here and hold no targets of
        their own."""
        keys = {record_key(r): r for r in self.records}
        unknown = sorted(set(index.records) - set(keys))
        if unknown:
            raise ValueError(
                f"{index.path} has targets of records that {self.path} lacks, e.g. "
                f"{unknown[:3]} (built from another data file?)"
            )
        both = [k for k in index.records if "signal_targets" in keys[k]]
        if both:
            raise ValueError(
                f"{self.path}:{keys[both[0]]['_line']}: the record has signal_targets of its "
                f"own and in {index.path}; keep one"
            )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        where = f"{self.path}:{record['_line']}"
        images = [load_image(self.root / p) for p in record.get("images", [])]
        videos = [load_video(self.root / p) for p in record.get("videos", [])]
        regions = [self.region(r, images, where) for r in record.get("regions", [])]
        messages = record_messages(record, record_counts(record), where)
        calls = [c for m in messages if m.invocation is not None for c in m.invocation.calls]
        targets = None
        stored = self.stored_targets(record)
        if stored is not None:
            unknown = sorted(set(stored) - {c.id for c in calls})
            if unknown:
                raise ValueError(f"{where}: signal targets for unknown calls {unknown}")
            targets = [stored.get(c.id) for c in calls]
        try:
            return self.processor.sample(messages, images, videos, regions, signal_targets=targets)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    def stored_targets(self, record: dict[str, Any]) -> dict[str, Tensor] | None:
        """Call id -> target of a record, from its ``signal_targets`` file or the index."""
        if "signal_targets" in record:
            return load_file(str(self.root / record["signal_targets"]))
        if self.targets is not None and record_key(record) in self.targets:
            return self.targets.targets(record_key(record))
        return None

    def region(self, data: dict[str, Any], images, where: str) -> Region:
        k = int(data.get("image", 0))
        if not 0 <= k < len(images):
            raise ValueError(f"{where}: a region refers to image {k} of {len(images)}")
        image = images[k]
        try:
            if "mask" in data and isinstance(data["mask"], str):
                values = to_tensor(load_image(self.root / data["mask"])).mean(0)  # (H, W)
                return Region(Mask((values >= 0.5).double()), k)
            return Region(shape_from_json(data, image.height, image.width), k)
        except RegionError as err:
            raise ValueError(f"{where}: {err}") from None


def collate(samples: list[Sample]) -> list[Sample]:
    """Batches stay lists of samples: splicing pads them inside the model."""
    return samples
