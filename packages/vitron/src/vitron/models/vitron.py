"""Vitron: CLIP vision tower + projector + region encoder + causal LM + signal heads + synergy.

The LLM reads token embeddings with media spliced in at placeholders (images and video frames
through the frozen vision tower and the projector, regions through the region encoder), answers,
and may write calls followed by one ``<signal>`` token per call. The last-layer hidden state of
each signal token of a reply (the i-th signal token of a reply is its i-th call's; see
:func:`vitron.processing.encode_conversation`) goes through the signal heads into a
task-specific + task-invariant feature and a task-specific embedding of the specialist's
conditioning width; the synergy module's discriminator tries to recognise the task from the
invariant part through gradient reversal.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelHubMixin
from safetensors.torch import save_model
from torch import Tensor, nn

from common_kernels.runtime.files import AtomicSavePretrained
from vitron.checks import check_not_empty
from vitron.models.config import VitronConfig, read_config
from vitron.models.loading import (
    assign_safetensors,
    default_dtype,
    empty_weights,
    meta_parameters,
)
from vitron.models.modules import (
    Projector,
    RegionEncoder,
    SignalFeatures,
    SignalHeads,
    SynergyModule,
)
from vitron.models.sources import (
    CONFIG_NAME,
    SAVED_NAMES,
    TOKENIZER_DIR,
    WEIGHTS_NAME,
    check_model_source,
    pretrained_source,
)
from vitron.models.tokens import add_vitron_tokens
from vitron.models.vision import VisionTower, patch_grid_pool
from vitron.multimodal import Spliced, splice_batch
from vitron.processing import IGNORE_INDEX, Sample, VitronProcessor

ALIGN_LOSSES = ("cosine", "mse")


@dataclass
class VitronOutput:
    """Losses of a forward pass (``None`` when a part had nothing to score).

    Args:
        loss: ``lm_loss + align_weight * align_loss + synergy_weight * synergy_loss``.
        lm_loss: next-token cross-entropy over supervised tokens.
        align_loss: signal embeddings vs. their specialist-conditioning targets.
        synergy_loss: task discriminator cross-entropy on the task-invariant features.
        logits: (B, L, V) next-token logits.
        signals: per sample, the features of its signals that have a head.
    """

    loss: Tensor
    lm_loss: Tensor | None
    align_loss: Tensor | None
    synergy_loss: Tensor | None
    logits: Tensor
    signals: list[SignalFeatures | None] = field(default_factory=list)


def build_llm(llm_config: dict[str, Any]) -> nn.Module:
    """A randomly initialised causal LM from a transformers config dict (with ``model_type``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if "model_type" not in llm_config:
        raise ValueError("the llm config needs a 'model_type' (e.g. 'llama')")
    config = AutoConfig.for_model(**llm_config)
    return AutoModelForCausalLM.from_config(config)


class VitronModel(
    nn.Module,
    AtomicSavePretrained,
    ModelHubMixin,
    library_name="vitron",
    tags=["vitron", "image-text-to-text"],
):
    """The unified vision LLM.

    Args:
        config: architecture of every part.
        tokenizer: the LLM's tokenizer holding ``config.special_tokens``.
        llm: a transformers causal LM (built randomly from ``config.llm`` when ``None``).
        vision: the vision tower (built randomly from ``config.vision`` when ``None``).
    """

    def __init__(
        self,
        config: VitronConfig,
        tokenizer: Any,
        llm: nn.Module | None = None,
        vision: VisionTower | None = None,
    ) -> None:
        super().__init__()
        config.check_budget()
        self.config = config
        self.tokenizer = tokenizer
        missing = [t for t in config.special_tokens if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"the tokenizer lacks the tokens {missing}; see add_vitron_tokens")
        self.vision = vision if vision is not None else VisionTower(config.vision)
        self.vision.requires_grad_(False)
        self.llm = llm if llm is not None else build_llm(config.llm)
        width = self.llm.get_input_embeddings().weight.shape[1]
        if self.llm.get_input_embeddings().weight.shape[0] < len(tokenizer):
            raise ValueError(
                f"the LLM has {self.llm.get_input_embeddings().weight.shape[0]} embedding rows "
                f"but the tokenizer has {len(tokenizer)} tokens"
            )
        self.projector = Projector(self.vision.hidden_size, width, config.projector_hidden)
        self.region_encoder = RegionEncoder(
            self.vision.hidden_size, width, config.region, config.vision.image_size
        )
        self.signal_heads = SignalHeads(width, config.signal)
        self.synergy = SynergyModule(config.signal)
        self.processor = VitronProcessor(tokenizer, config)
        ids = tokenizer.convert_tokens_to_ids(list(config.special_tokens))
        self.image_token_id, self.video_token_id, self.region_token_id, self.signal_token_id = ids

    # ----------------------------------------------------------------- construction and I/O

    @classmethod
    def from_components(
        cls,
        llm: str,
        vision: str = "openai/clip-vit-large-patch14",
        *,
        dtype: torch.dtype | None = None,
        device_map: str | dict[str, Any] | torch.device | None = None,
        **config_overrides: Any,
    ) -> VitronModel:
        """A new Vitron from a pretrained causal LM and CLIP tower (the start of stage 1).

        Both names follow the loader rule (:mod:`vitron.models.sources`) before anything loads.
        The LLM and the tower are loaded by transformers straight into ``dtype`` (no random
        copy); the new parts (projector, region encoder, signal heads, synergy) are built in
        ``dtype`` at random, as stage 1 starts them.

        Args:
            llm: transformers causal LM id or folder (e.g. ``"lmsys/vicuna-7b-v1.5"``).
            vision: CLIP id/folder or ``"open_clip:<name>/<tag>"`` (see ``VisionTower``).
            dtype: dtype of every floating-point weight (default: torch's default, float32).
            device_map: passed to transformers for the LLM: a device (``"cuda:0"``) or a
                device map (``"auto"``, ``{"model.layers.0": 0, ...}``; needs accelerate). The
                other parts go to the device of the LLM's input embeddings. ``None``: the CPU.
            **config_overrides: other :class:`VitronConfig` fields (``select_layer`` and
                ``preprocess`` go to the vision config).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = dtype or torch.get_default_dtype()
        vision_kwargs = {
            k: config_overrides.pop(k)
            for k in ("select_layer", "preprocess")
            if k in config_overrides
        }
        llm = pretrained_source(llm, "llm", "causal LM folder")
        tower = VisionTower.from_pretrained(vision, dtype=dtype, **vision_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(llm)
        lm = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype, device_map=device_map)
        config = VitronConfig(vision=tower.config, llm=lm.config.to_dict(), **config_overrides)
        add_vitron_tokens(tokenizer, lm, config)
        config.llm = lm.config.to_dict()
        with default_dtype(dtype):
            model = cls(config, tokenizer, llm=lm, vision=tower)
        model.place_parts(lm.get_input_embeddings().weight.device)
        return model

    @classmethod
    def from_official(
        cls,
        base: str | Path,
        lora: str | Path | None = None,
        vision_tower: str | Path | None = None,
        *,
        dtype: torch.dtype | None = None,
        system_prompt: str | None = None,
        seed: int = 0,
    ) -> VitronModel:
        """The released Vitron checkpoint (LLaVA format) as a Vitron model (on the CPU).

        Every file is checked first (:func:`vitron.models.official.check_official`: one line
        naming the file and what was expected); then the base's weights are read, the LoRA
        merged (``W + (alpha / r) B A``), ``non_lora_trainables.bin`` gives the projector and
        the region extractor (the ``"official"`` region style), and the image tower's CLIP
        weights are mapped. The parts the release lacks (signal heads, synergy module) start
        at random values seeded by ``seed``; videos are refused. See
        ``docs/official-checkpoint.md``.

        Args:
            base: the base folder (``Vitron/vitron-base``: config.json, shards + index or one
                weight file, tokenizer).
            lora: the LoRA folder (``Vitron/vitron-lora``), or ``None``.
            vision_tower: the LanguageBind_Image folder (``None``: the config's
                ``mm_image_tower`` when it is an existing folder).
            dtype: dtype of every floating-point weight (default: torch's default).
            system_prompt: the conversation's system prompt (default: vicuna_v1's sentence).
            seed: seed of the parts the release lacks.
        """
        from vitron.models.official import check_official, load_official

        files = check_official(base, lora, vision_tower)
        return load_official(cls, files, dtype=dtype, system_prompt=system_prompt, seed=seed)

    def place_parts(self, device: str | torch.device) -> None:
        """Move every part but the LLM (which transformers may spread over devices)."""
        parts = (self.vision, self.projector, self.region_encoder, self.signal_heads, self.synergy)
        for part in parts:
            part.to(device)

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``config.json``, ``model.safetensors`` and the tokenizer folder."""
        from common_kernels.runtime.files import atomic_write
        from vitron.io import write_json
        from vitron.version import __version__

        self.config.llm = _llm_config_dict(self.llm)
        write_json(
            save_directory / CONFIG_NAME, {**self.config.to_dict(), "vitron_version": __version__}
        )
        with atomic_write(save_directory / WEIGHTS_NAME) as temp:
            save_model(self, str(temp), {"format": "pt"})
        self.tokenizer.save_pretrained(str(save_directory / TOKENIZER_DIR))

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | Path, **kwargs: Any
    ) -> VitronModel:
        """Load a ``save_pretrained`` folder or hub id (see :meth:`_from_pretrained`).

        The loader rule comes first (:func:`vitron.models.sources.check_model_source`): a name
        that looks like a path is a local folder (a missing one is a ``FileNotFoundError``
        naming it), anything else a hub id, refused within 5 s (``HubUnreachableError``) when
        the hub is out of reach and the repository is not cached.

        Args:
            pretrained_model_name_or_path: a Vitron folder or a hub id.
            **kwargs: ``dtype``, ``device`` and huggingface_hub's download options.
        """
        source = check_model_source(pretrained_model_name_or_path)
        return super().from_pretrained(str(source), **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        **unused: Any,
    ) -> VitronModel:
        """Build the model on the meta device and assign the saved weights (no random copy).

        ``VitronModel.from_pretrained(model_id, dtype=..., device=...)`` passes ``dtype`` (of
        every floating-point weight; default torch's default, float32) and ``device`` (one
        device; a transformers ``device_map`` applies only to :meth:`from_components`).
        """
        from transformers import AutoTokenizer

        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(
                snapshot_download(
                    repo_id=model_id, revision=revision, cache_dir=cache_dir,
                    force_download=force_download, local_files_only=local_files_only, token=token,
                )
            )  # fmt: skip
        for name in SAVED_NAMES:
            if not (folder / name).exists():
                raise FileNotFoundError(
                    f"{folder} lacks {name} (written by VitronModel.save_pretrained)"
                )
        config = read_config(folder / CONFIG_NAME)
        # tokenizer_options: what transformers does not save (an imported LLaMA's legacy)
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder / TOKENIZER_DIR), **config.tokenizer_options
        )
        dtype = dtype or torch.get_default_dtype()
        with empty_weights(), default_dtype(dtype):
            model = cls(config, tokenizer)  # parameters on the meta device: nothing initialised
        # accelerate's skeleton registers a fresh meta parameter at each assignment, which
        # unties tied weights (lm_head = embed_tokens): tie them again, then assign once
        model.llm.tie_weights()
        assign_safetensors(model, folder / WEIGHTS_NAME, dtype, device)
        never_loaded = meta_parameters(model)
        if never_loaded:
            raise ValueError(
                f"{folder / WEIGHTS_NAME} lacks {len(never_loaded)} weight(s), e.g. "
                f"{never_loaded[:3]}"
            )
        return model.to(device).eval()

    # ----------------------------------------------------------------- encoding and splicing

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.fc1.weight.dtype

    def encode_images(self, pixels: Tensor) -> Tensor:
        """(N, 3, S, S) normalised pixels -> (N, grid^2, C) frozen patch features."""
        check_not_empty(pixels, "pixels", "give (N, 3, S, S) images with N >= 1")
        with torch.no_grad():
            return self.vision(pixels.to(self.device, self.vision_dtype)).to(self.dtype)

    @property
    def vision_dtype(self) -> torch.dtype:
        return next(self.vision.parameters()).dtype

    def encode_videos(self, videos: Tensor) -> Tensor:
        """(m, T, 3, S, S) frames -> (m, T * (grid / video_pool)^2, H) LLM-space rows: each
        frame's patch grid is average-pooled by ``config.video_pool`` before the projector."""
        check_not_empty(videos, "videos", "give (m, T, 3, S, S) frames with m, T >= 1")
        m = videos.shape[0]
        flat = self.encode_images(videos.flatten(0, 1))  # (m * T, P, C)
        pooled = patch_grid_pool(flat, self.config.vision.grid, self.config.video_pool)
        return self.projector(pooled).reshape(m, -1, self.llm_width)  # (m, T * P', H)

    def media_embeddings(self, sample: Sample) -> list[Tensor]:
        """The sample's media embeddings in placeholder order: (rows, H) each."""
        kinds = {
            self.image_token_id: "image",
            self.video_token_id: "video",
            self.region_token_id: "region",
        }
        ids = sample.input_ids
        if sample.placeholder_mask is not None:
            ids = ids[sample.placeholder_mask.to(ids.device)]  # media placeholders only
        order = [kinds[int(t)] for t in ids if int(t) in kinds]
        images, videos, regions = [], [], []
        features = None
        if sample.images is not None:
            features = self.encode_images(sample.images)  # (n, P, C)
            images = list(self.projector(features))
        if sample.videos is not None:
            videos = list(self.encode_videos(sample.videos))
        if sample.regions:
            if features is None:
                raise ValueError("regions need the image they were drawn on")
            index = torch.tensor([r.image for r in sample.regions], device=self.device)
            coverage = torch.stack([r.coverage for r in sample.regions]).to(self.device)  # (R, P)
            boxes = torch.stack([r.box for r in sample.regions]).to(self.device)  # (R, 4)
            regions = list(self.region_encoder(features[index], coverage, boxes)[:, None])
        queues = {"image": iter(images), "video": iter(videos), "region": iter(regions)}
        return [next(queues[kind]) for kind in order]

    @property
    def llm_width(self) -> int:
        return self.llm.get_input_embeddings().weight.shape[1]

    def splice(
        self, samples: Sequence[Sample], padding_side: str = "right", truncate: bool = True
    ) -> Spliced:
        """Embed the samples' tokens and splice their media in (see :mod:`vitron.multimodal`).

        Args:
            samples: the samples.
            padding_side: ``"right"`` (training) or ``"left"`` (generation).
            truncate: cut sequences to ``config.max_length`` (training); otherwise a longer
                sequence is an error (inference must not lose the end of a conversation).
        """
        embed = self.llm.get_input_embeddings()
        ids = [s.input_ids.to(self.device) for s in samples]
        placeholders = {
            self.image_token_id: "image",
            self.video_token_id: "video",
            self.region_token_id: "region",
        }
        has_labels = all(s.labels is not None for s in samples)
        spliced = splice_batch(
            ids,
            [embed(i) for i in ids],
            [self.media_embeddings(s) for s in samples],
            placeholders,
            labels=[s.labels.to(self.device) for s in samples] if has_labels else None,
            signal_index=[s.signal_index for s in samples],
            media_mask=[s.placeholder_mask for s in samples],
            max_length=self.config.max_length if truncate else None,
            padding_side=padding_side,
        )
        longest = max(spliced.lengths)
        if not truncate and longest > self.config.max_length:
            raise ValueError(
                f"the conversation is {longest} positions long (text + media), above the model's "
                f"max_length {self.config.max_length}; start a new conversation"
            )
        return spliced

    # ----------------------------------------------------------------- training forward

    def forward(
        self,
        samples: Sequence[Sample],
        *,
        align_weight: float = 1.0,
        synergy_weight: float = 0.1,
        align_loss: str = "cosine",
    ) -> VitronOutput:
        """Losses of a batch of samples with labels.

        Args:
            samples: from :meth:`VitronProcessor.sample` (labels required for ``lm_loss``).
            align_weight: weight of the embedding-alignment loss.
            synergy_weight: weight of the synergy (discriminator) loss.
            align_loss: ``"cosine"`` (1 - cosine similarity) or ``"mse"``.
        """
        if align_loss not in ALIGN_LOSSES:
            raise ValueError(f"align_loss must be one of {ALIGN_LOSSES}, got {align_loss!r}")
        spliced = self.splice(samples)
        out = self.llm(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            output_hidden_states=True,
            use_cache=False,  # no cache to fill in training (and block checkpointing recomputes)
        )
        lm = None if spliced.labels is None else causal_lm_loss(out.logits, spliced.labels)
        signals = self._signal_features(samples, spliced, out.hidden_states[-1])
        align = alignment_loss(samples, spliced, signals, align_loss)
        synergy = self._synergy_loss(signals)
        total = out.logits.new_zeros((), dtype=torch.float32)
        for value, weight in ((lm, 1.0), (align, align_weight), (synergy, synergy_weight)):
            if value is not None:
                total = total + weight * value
        return VitronOutput(total, lm, align, synergy, out.logits, signals)

    def _signal_features(
        self, samples, spliced: Spliced, hidden: Tensor
    ) -> list[SignalFeatures | None]:
        """Per sample, the signal features of its signals whose task has a head."""
        found = []
        heads = set(self.signal_heads.tasks)
        for i, sample in enumerate(samples):
            pairs = [
                (pos, sample.signal_tasks[k])
                for pos, k in zip(
                    spliced.signal_positions[i], spliced.signal_indices[i], strict=True
                )
                if k < len(sample.signal_tasks) and sample.signal_tasks[k] in heads
            ]
            if not pairs:
                found.append(None)
                continue
            rows = hidden[i, [p for p, _ in pairs]]  # (n, H)
            found.append(self.signal_heads(rows, [t for _, t in pairs]))
        return found

    def _synergy_loss(self, signals: Sequence[SignalFeatures | None]) -> Tensor | None:
        present = [s for s in signals if s is not None]
        if not present:
            return None
        invariant = torch.cat([s.invariant for s in present])
        tasks = [t for s in present for t in s.tasks]
        return self.synergy(invariant, tasks)

    # ----------------------------------------------------------------- inference

    @torch.no_grad()
    def generate(
        self,
        sample: Sample,
        *,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        """New token ids (1-D) continuing the sample's prompt.

        Args:
            sample: the prompt (:meth:`VitronProcessor.sample` with ``add_generation_prompt``).
            max_new_tokens: tokens to generate at most, >= 1; fewer when the prompt leaves
                fewer of ``config.max_length``'s positions (the model holds no more).
            do_sample: sample instead of greedy decoding.
            temperature: sampling temperature.
            top_p: nucleus sampling mass.
            seed: seed of the sampling (None: torch's current state).
            progress: show the tokens generated on stderr (``common_kernels.runtime.progress``:
                a bar on a terminal, a line every 10 s in a log).

        Raises:
            ValueError: ``max_new_tokens`` < 1, or a prompt that fills ``config.max_length``.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList

        from common_kernels.runtime.progress import progress as show_progress

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        spliced = self.splice([sample], padding_side="left", truncate=False)
        left = self.config.max_length - max(spliced.lengths)
        if left < 1:
            raise ValueError(
                f"the conversation is {max(spliced.lengths)} positions long (text + media), the "
                f"model's max_length {self.config.max_length}: no position is left for a reply; "
                "start a new conversation"
            )
        limit = min(max_new_tokens, left)
        ticks = show_progress(
            range(limit), desc="vitron reply", unit="tokens", leave=False, disable=not progress
        )
        next(ticks)  # started: each step below counts one token

        class Ticks(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                next(ticks, None)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        eos = self.tokenizer.eos_token_id
        kwargs: dict[str, Any] = {
            "max_new_tokens": limit, "do_sample": do_sample,
            "stopping_criteria": StoppingCriteriaList([Ticks()]),
        }  # fmt: skip
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        try:
            with rng:
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.llm.generate(
                    inputs_embeds=spliced.inputs_embeds,
                    attention_mask=spliced.attention_mask,
                    pad_token_id=self.tokenizer.pad_token_id
                    if self.tokenizer.pad_token_id is not None
                    else eos,
                    eos_token_id=eos,
                    **kwargs,
                )
        finally:
            ticks.close()  # a reply that ends early: the bar goes
        return out[0].cpu()

    @torch.no_grad()
    def signal_embeddings(self, sample: Sample) -> list[tuple[str, Tensor] | None]:
        """Per call of a prompt + reply sample: (task, embedding), ``None`` when the call has
        no signal token in its reply or its task has no head."""
        spliced = self.splice([sample], truncate=False)
        out = self.llm(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            output_hidden_states=True,
        )
        features = self._signal_features([sample], spliced, out.hidden_states[-1])[0]
        heads = set(self.signal_heads.tasks)
        kept = [
            k for k in spliced.signal_indices[0]
            if k < len(sample.signal_tasks) and sample.signal_tasks[k] in heads
        ]  # fmt: skip
        found = dict(zip(kept, features.embeddings if features is not None else [], strict=True))
        return [
            (task, found[k].float().cpu()) if k in found else None
            for k, task in enumerate(sample.signal_tasks)
        ]


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor | None:
    """Mean next-token cross-entropy over supervised positions; ``None`` if there are none."""
    shifted = labels[:, 1:]
    if not bool((shifted != IGNORE_INDEX).any()):
        return None
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), shifted.flatten(), ignore_index=IGNORE_INDEX
    )


def alignment_loss(samples, spliced: Spliced, signals, kind: str) -> Tensor | None:
    """Mean distance between signal embeddings and their targets (signals with a target only)."""
    terms = []
    for i, (sample, features) in enumerate(zip(samples, signals, strict=True)):
        if features is None:
            continue
        heads = set(features.tasks)
        kept = [
            k for k in spliced.signal_indices[i]
            if k < len(sample.signal_tasks) and sample.signal_tasks[k] in heads
        ]  # fmt: skip
        for embedding, k in zip(features.embeddings, kept, strict=True):
            target = sample.signal_targets[k] if k < len(sample.signal_targets) else None
            if target is None:
                continue
            target = target.to(embedding.device, torch.float32)
            if target.shape != embedding.shape:
                raise ValueError(
                    f"signal target {k} of task {sample.signal_tasks[k]} has shape "
                    f"{tuple(target.shape)}; the head outputs {tuple(embedding.shape)}"
                )
            pred = embedding.float()
            if kind == "cosine":
                terms.append(1 - F.cosine_similarity(pred, target, dim=0))
            else:
                terms.append(F.mse_loss(pred, target))
    return torch.stack(terms).mean() if terms else None


def _llm_config_dict(llm: nn.Module) -> dict[str, Any]:
    """The transformers config of the LLM (under a peft wrapper too) as a JSON-able dict."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    data = base.config.to_dict()
    return json.loads(json.dumps(data, default=str))


def model_size(model: nn.Module) -> int:
    """The number of parameters of ``model`` (a whole model, or a part such as a block list).

    Args:
        model: the module.
    """
    return sum(p.numel() for p in model.parameters())
