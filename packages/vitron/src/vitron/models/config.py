"""Serialisable configuration of a Vitron model (written to ``config.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common_kernels.runtime.configs import DictConfig
from vitron.geometry import PREPROCESS_MODES

CONFIG_FORMAT = 1
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
VISION_BACKENDS = ("transformers", "open_clip")
TEMPLATES = ("vicuna_v1", "plain")
REGION_STYLES = ("vitron", "official")
PROMPT_LAYOUTS = ("vitron", "official")

# tasks whose calls carry a signal embedding, and the conditioning width of the default
# specialist each one feeds (itaclip ViT-B/16 text space, SDXL cross-attention, ModelScope T2V)
DEFAULT_SIGNAL_DIMS = {
    "segment_image": 512,
    "segment_video": 512,
    "generate_image": 2048,
    "edit_image": 2048,
}


@dataclass
class VisionConfig:
    """The image encoder.

    Args:
        backend: ``"transformers"`` (``CLIPVisionModel``) or ``"open_clip"`` (a ViT tower).
        model_config: ``CLIPVisionConfig.to_dict()`` or an open_clip model config
            (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``).
        select_layer: hidden state whose patch tokens are used (``-2`` = output of the
            second-to-last block, LLaVA's choice; ``k >= 1`` = output of block ``k``).
        preprocess: ``"pad"`` (LLaVA), ``"center_crop"`` (CLIP) or ``"resize"``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
    """

    backend: str = "transformers"
    model_config: dict[str, Any] = field(default_factory=dict)
    select_layer: int = -2
    preprocess: str = "pad"
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD

    def __post_init__(self) -> None:
        if self.backend not in VISION_BACKENDS:
            raise ValueError(
                f"vision backend must be one of {VISION_BACKENDS}, got {self.backend!r}"
            )
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(
                f"preprocess must be one of {PREPROCESS_MODES}, got {self.preprocess!r}"
            )
        if self.select_layer == 0:
            raise ValueError("select_layer must be a block index (>= 1) or negative, got 0")
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    @property
    def _vision_cfg(self) -> dict[str, Any]:
        return (
            self.model_config.get("vision_cfg", {})
            if self.backend == "open_clip"
            else self.model_config
        )

    @property
    def image_size(self) -> int:
        return int(self._vision_cfg.get("image_size", 224))

    @property
    def patch_size(self) -> int:
        return int(self._vision_cfg.get("patch_size", 16))

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size


@dataclass
class RegionConfig:
    """The region encoder: mask pooling -> 3-layer MLP, plus a box encoding.

    Args:
        hidden: width of the MLP hidden layers.
        location_frequencies: Fourier frequencies per box coordinate (``"vitron"`` style).
        style: ``"vitron"`` (coverage-weighted pooling, GELU MLPs, Fourier box features) or
            ``"official"`` (the released checkpoint's extractor: mean over the patches the
            region touches, ReLU MLPs, a 2-layer MLP on the box's pixel coordinates in the
            model's square input; see ``docs/official-checkpoint.md``).
    """

    hidden: int = 1024
    location_frequencies: int = 8
    style: str = "vitron"

    def __post_init__(self) -> None:
        if self.style not in REGION_STYLES:
            raise ValueError(f"region style must be one of {REGION_STYLES}, got {self.style!r}")


@dataclass
class SignalConfig:
    """Signal embeddings and the cross-task synergy module.

    Args:
        tasks: tasks that get a task-specific head (the discriminator's classes).
        specific_dim: width of the task-specific features.
        invariant_dim: width of the task-invariant features.
        output_dims: task -> width of the specialist conditioning it is projected to.
        discriminator_hidden: hidden width of the task discriminator.
        grl_lambda: gradient-reversal scale.
    """

    tasks: tuple[str, ...] = tuple(DEFAULT_SIGNAL_DIMS)
    specific_dim: int = 256
    invariant_dim: int = 256
    output_dims: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SIGNAL_DIMS))
    discriminator_hidden: int = 256
    grl_lambda: float = 1.0

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        if len(self.tasks) < 2:
            raise ValueError(f"the synergy module needs at least 2 tasks, got {self.tasks}")
        missing = [t for t in self.tasks if t not in self.output_dims]
        if missing:
            raise ValueError(f"output_dims has no width for tasks {missing}")


@dataclass
class VitronConfig(DictConfig):
    """Everything needed to rebuild a Vitron model (weights live in ``model.safetensors``).

    Args:
        vision: the image encoder.
        llm: a transformers config dict of the causal LM (with ``model_type``).
        region: the region encoder.
        signal: signal heads and the synergy module.
        projector_hidden: hidden width of the 2-layer projector (``None`` = LLM width).
        video_frames: frames sampled from a video.
        video_pool: average-pooling factor of each frame's patch grid (1 = all patches;
            the default 2 turns ViT-L/14's 16 x 16 grid into 8 x 8 = 64 tokens per frame).
        max_length: spliced sequence length limit (text + media embeddings).
        text_budget: positions kept for text (system prompt, user turns, replies, results)
            next to one image and one video; construction fails when one video + one image +
            ``text_budget`` exceed ``max_length`` (see :meth:`check_budget`).
        template: conversation template, ``"vicuna_v1"`` or ``"plain"``.
        image_token: placeholder of one image.
        video_token: placeholder of one video.
        region_token: placeholder of one region.
        signal_token: the token whose hidden state becomes a call's signal embedding.
        random_weights: the weights are random, never trained (``vitron tiny-model``): the
            page says so. Written to ``config.json`` only when True (vitron 0.4.2 and older
            refuse a config with a field they do not know); a config without it reads False.
        system_prompt: the ``vicuna_v1`` system prompt (``None``: vitron's own, which
            describes the ``<invoke>`` calls); an imported official model keeps its own.
            Written only when set, as ``video_support`` and a non-default region style.
        video_support: ``None`` when the model takes videos, else why it does not (an
            imported official model: its video tower is not mapped); a video is refused
            with this text before any work.
        prompt_layout: ``"vitron"`` (the prompt tokenised in one pass) or ``"official"`` (an
            imported official model: the release's chunked tokenisation around the image and
            region placeholders, :mod:`vitron.official_prompt`, and user regions marked
            right after the images, as the release's page marks them).
        tokenizer_options: keyword arguments the saved tokenizer is loaded with (an imported
            LLaMA tokenizer's ``legacy``, which decides the word-start ``▁`` after ``</s>`` and
            which transformers does not save). Both written only when set.
        format: version of this config layout.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: dict[str, Any] = field(default_factory=dict)
    region: RegionConfig = field(default_factory=RegionConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    projector_hidden: int | None = None
    video_frames: int = 8
    video_pool: int = 2
    max_length: int = 2048
    text_budget: int = 512
    template: str = "vicuna_v1"
    image_token: str = "<image>"
    video_token: str = "<video>"
    region_token: str = "<region>"
    signal_token: str = "<signal>"
    random_weights: bool = False
    system_prompt: str | None = None
    video_support: str | None = None
    prompt_layout: str = "vitron"
    tokenizer_options: dict[str, Any] = field(default_factory=dict)
    format: int = CONFIG_FORMAT

    def __post_init__(self) -> None:
        for name, cls in (
            ("vision", VisionConfig),
            ("region", RegionConfig),
            ("signal", SignalConfig),
        ):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {self.template!r}")
        if self.prompt_layout not in PROMPT_LAYOUTS:
            raise ValueError(
                f"prompt_layout must be one of {PROMPT_LAYOUTS}, got {self.prompt_layout!r}"
            )
        if self.video_frames < 1:
            raise ValueError(f"video_frames must be >= 1, got {self.video_frames}")
        if self.video_pool < 1 or self.vision.grid % self.video_pool:
            raise ValueError(
                f"video_pool must divide the patch grid ({self.vision.grid}), got {self.video_pool}"
            )
        if self.format != CONFIG_FORMAT:
            raise ValueError(
                f"config format {self.format} is not supported (this vitron reads {CONFIG_FORMAT})"
            )
        self.check_budget()

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict; ``random_weights`` only when True, so that
        the configs of trained models stay readable by vitron 0.4.2, which lacks the field."""
        data = super().to_dict()
        if not data["random_weights"]:
            del data["random_weights"]
        for name in ("system_prompt", "video_support"):  # new fields: only when set
            if data[name] is None:
                del data[name]
        if data["region"]["style"] == "vitron":
            del data["region"]["style"]
        if data["prompt_layout"] == "vitron":
            del data["prompt_layout"]
        if not data["tokenizer_options"]:
            del data["tokenizer_options"]
        return data

    @property
    def official_placeholders(self) -> tuple[str, str] | None:
        """(image, region) placeholders the official layout cuts the prompt at, or ``None``
        (the prompt is tokenised in one pass)."""
        return (self.image_token, self.region_token) if self.prompt_layout == "official" else None

    @property
    def special_tokens(self) -> tuple[str, ...]:
        return (self.image_token, self.video_token, self.region_token, self.signal_token)

    @property
    def tokens_per_image(self) -> int:
        return self.vision.grid**2

    @property
    def tokens_per_frame(self) -> int:
        return (self.vision.grid // self.video_pool) ** 2

    @property
    def tokens_per_video(self) -> int:
        return self.video_frames * self.tokens_per_frame

    def check_budget(self) -> None:
        """Raise when one video + one image + ``text_budget`` do not fit in ``max_length``, or
        ``max_length`` exceeds the LLM's positions (``max_position_embeddings``, when given)."""
        if self.text_budget < 0:
            raise ValueError(f"text_budget must be >= 0, got {self.text_budget}")
        need = self.tokens_per_video + self.tokens_per_image + self.text_budget
        if need > self.max_length:
            raise ValueError(
                f"a video does not fit: {self.video_frames} frames x {self.tokens_per_frame} "
                f"tokens per frame = {self.tokens_per_video}, + one image "
                f"{self.tokens_per_image} + text_budget {self.text_budget} = {need} positions "
                f"> max_length {self.max_length}; raise video_pool (now {self.video_pool}), "
                "lower video_frames or text_budget, or raise max_length"
            )
        positions = self.llm.get("max_position_embeddings")
        if positions is not None and self.max_length > int(positions):
            raise ValueError(
                f"max_length {self.max_length} exceeds the LLM's max_position_embeddings "
                f"{positions}"
            )


def read_config(path: str | Path) -> VitronConfig:
    """The :class:`VitronConfig` of a ``config.json`` written by ``save_pretrained`` (the
    ``vitron_version`` it records is dropped).

    Args:
        path: the file.

    Raises:
        OSError: it cannot be read.
        ValueError: it is not JSON, or not a valid config.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data.pop("vitron_version", None)
    return VitronConfig.from_dict(data)
