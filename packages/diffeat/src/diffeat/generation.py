"""Features recorded while a diffusers pipeline generates an image from text.

:func:`generate_with_features` runs the pipeline's own denoising loop once and records the
named activations of its denoising network (U-Net, PixArt, FLUX or SD3 transformer) at the
loop steps asked for: no second pass. The recorder of an extraction (forward hooks and, for
q/k/v and maps, the recording attention processor) stays installed for the whole generation
and keeps what it sees only at those steps; it never changes the pass, so the image is the
one the pipeline makes without recording.

A step is an index into the loop, i.e. the k-th call of the network (``0`` is the noisiest;
``pipe.scheduler.timesteps[k]`` is its timestep). With classifier-free guidance the pipelines
call the network once per step on ``[unconditional, conditional]`` halves; ``branch`` picks
the half (the conditional one by default, what an extraction with the prompt gives).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from common_kernels.runtime.errors import InvalidValue, literal
from diffeat.backbones import backbone_of
from diffeat.backbones.mmdit import JointRecorder
from diffeat.capture import ActivationRecorder, MissingActivationsError
from diffeat.extraction import VAE_OUT, BaseFeatureExtractor
from diffeat.features import Features

BRANCHES = ("cond", "uncond", "both")


@dataclass
class GeneratedFeatures:
    """What :func:`generate_with_features` returns.

    Attributes:
        output: the pipeline's own output (``.images``), unchanged by the recording.
        features: ``{step: Features}``, one ``(B, C, h, w)`` tensor per name at each step
            (``branch="both"``: ``2B``, the unconditional images first).
        timesteps: ``{step: the timestep the network received}`` (FLUX: divided by 1000, as
            ``FluxPipeline`` passes it).
    """

    output: Any
    features: dict[int, Features] = field(default_factory=dict)
    timesteps: dict[int, float] = field(default_factory=dict)


class _Gate:
    """Keeps recorded tensors only while :attr:`active` (the loop step is one asked for)."""

    active = False

    def record(self, name: str, value: Tensor) -> None:
        if self.active:
            super().record(name, value)  # type: ignore[misc]

    def raise_if_missing(self) -> None:
        """Checked after each recorded step instead (the features are taken away there)."""


class _GatedRecorder(_Gate, ActivationRecorder):
    """An :class:`ActivationRecorder` (U-Nets, PixArt) that records at chosen steps only."""


class _GatedJointRecorder(_Gate, JointRecorder):
    """A :class:`JointRecorder` (FLUX, SD3) that records at chosen steps only."""


def _network(pipe) -> nn.Module:
    """The pipeline's denoising network (``unet`` or ``transformer``), or a clear error."""
    for attribute in ("unet", "transformer"):
        network = getattr(pipe, attribute, None)
        if isinstance(network, nn.Module):
            return network
    raise InvalidValue(
        "pipe",
        f"{{pipe}} must be a diffusers text-to-image pipeline with a unet or transformer; got "
        f"{literal(type(pipe).__name__)}",
    )


def loop_length(scheduler, pipeline: type, call: dict[str, Any]) -> int:
    """How many times a pipeline's loop calls the network for these call arguments: the
    length of the scheduler's timesteps for ``num_inference_steps`` (PNDM's PLMS loop is one
    longer; ``timesteps=`` or ``sigmas=`` given: their length).

    Args:
        scheduler: the pipeline's scheduler (a copy is set; it is not changed).
        pipeline: the pipeline's class (its ``num_inference_steps`` default).
        call: the keyword arguments of the pipeline call.
    """
    for key in ("timesteps", "sigmas"):
        if call.get(key) is not None:
            return len(call[key])
    steps = call.get("num_inference_steps")
    if steps is None:
        steps = inspect.signature(pipeline.__call__).parameters["num_inference_steps"].default
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidValue(
            "num_inference_steps",
            f"{{num_inference_steps}} must be an integer >= 1, got {literal(repr(steps))}",
        )
    scheduler = copy.deepcopy(scheduler)  # setting timesteps must not touch the pipeline's
    options = {"mu": 0.0} if scheduler.config.get("use_dynamic_shifting", False) else {}
    scheduler.set_timesteps(steps, **options)  # the count does not depend on the shift mu
    return len(scheduler.timesteps)


def check_steps(steps: Iterable[int] | int, length: int) -> tuple[int, ...]:
    """``steps`` as sorted loop indices, each an integer in ``[0, length - 1]``, no repeats.

    Args:
        steps: one index or several.
        length: how many steps the loop runs (:func:`loop_length`).
    """
    values = [steps] if isinstance(steps, int) and not isinstance(steps, bool) else steps
    try:
        values = list(values)
    except TypeError:
        raise InvalidValue(
            "steps",
            f"{{steps}} must be loop indices in [0, {length - 1}], got {literal(repr(steps))}",
        ) from None
    if not values:
        raise InvalidValue("steps", f"{{steps}} is empty; name loop indices in [0, {length - 1}]")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < length:
            raise InvalidValue(
                "steps",
                f"{{steps}} must be loop indices in [0, {length - 1}] (this run calls the "
                f"network {length} times), got {literal(repr(value))}",
            )
    if len(set(values)) != len(values):
        raise InvalidValue("steps", f"{{steps}} repeats a step: {values}")
    return tuple(sorted(values))


def generate_with_features(
    pipe,
    layers,
    steps: Iterable[int] | int,
    *,
    branch: str = "cond",
    output_device: torch.device | str | None = None,
    **call: Any,
) -> GeneratedFeatures:
    """Run ``pipe(**call)`` once, recording ``layers`` of its network at loop ``steps``.

    Every argument is checked before the pipeline runs.

    Args:
        pipe: a diffusers text-to-image pipeline whose network diffeat reads
            (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``PixArtSigmaPipeline``,
            ``PixArtAlphaPipeline``, ``FluxPipeline``, ``StableDiffusion3Pipeline``).
        layers: activation names of the network (not ``vae-out``), ``"all"`` or a preset name.
        steps: loop indices (``0`` = first, noisiest step) to record at.
        branch: with classifier-free guidance, the ``"cond"`` (prompt) or ``"uncond"``
            (negative prompt) half of the network's batch, or ``"both"``.
        output_device: move recorded tensors there (e.g. ``"cpu"``).
        **call: the pipeline call's arguments (``prompt``, ``num_inference_steps``,
            ``guidance_scale``, ``generator``, ``height``, ``width``, ``output_type``, ...).
            Not FLUX's ``true_cfg_scale`` above 1 nor SD3's ``skip_guidance_layers``: those
            call the network more than once per step.

    Returns:
        :class:`GeneratedFeatures`: the pipeline's output and ``{step: Features}``.
    """
    network = _network(pipe)
    backbone = backbone_of(network.config)
    if backbone.name == "hunyuan":  # no per-step recorder for its hooks (extract instead)
        raise InvalidValue("pipe", "{pipe}: recording while HunyuanDiT generates is not supported")
    if backbone.name == "if":  # not restated for IF's pipelines (pixel loop, stages)
        raise InvalidValue("pipe", "{pipe}: recording while DeepFloyd IF generates is not "
                           "supported")  # fmt: skip
    if branch not in BRANCHES:
        raise InvalidValue("branch", f"{{branch}} must be one of {BRANCHES}, got {branch!r}")
    for key, doubles in (("true_cfg_scale", lambda v: v > 1), ("skip_guidance_layers", bool)):
        if call.get(key) is not None and doubles(call[key]):
            raise InvalidValue(
                key, f"{{{key}}} calls the network twice per step; recording needs one call"
            )
    for key in ("image", "strength", "denoising_start", "denoising_end"):
        if call.get(key) is not None:  # these shorten or start the loop part-way
            raise InvalidValue(
                key, f"{{{key}}}: text-to-image loops only (img2img and split loops not read)"
            )
    if call.get("return_dict") is False:
        raise InvalidValue("return_dict", "{return_dict} must stay True (the images are read)")
    extractor_class = BaseFeatureExtractor.extractors[backbone.name]
    extractor = extractor_class.from_pipeline(pipe, layers=layers)  # checks the names
    names = list(extractor.layers)
    if VAE_OUT in names:
        raise InvalidValue(
            "layers", f"{{layers}}: {VAE_OUT!r} is the VAE latent, not recorded while generating"
        )
    length = loop_length(pipe.scheduler, type(pipe), call)
    wanted = check_steps(steps, length)
    recorder = _make_recorder(backbone.name, network, names, extractor.catalogue, output_device)
    result = GeneratedFeatures(output=None)
    raw: dict[int, dict[str, Tensor]] = {}
    calls = [0]

    def before(module, args, kwargs):
        step = calls[0]
        if isinstance(recorder, JointRecorder):  # its hooks reshape at every step
            recorder.image_grid = _joint_grid(module, args, kwargs)
        recorder.active = step in wanted
        if not recorder.active:
            return
        recorder.features = {}
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        result.timesteps[step] = float(torch.as_tensor(timestep).flatten()[0])

    def after(module, args, kwargs, output):
        step = calls[0]
        calls[0] += 1
        if recorder.active:
            recorder.active = False
            missing = recorder.missing()
            if missing:
                raise MissingActivationsError(
                    f"requested activations never fired at step {step}: {missing}"
                )
            raw[step] = dict(recorder.features)
            recorder.features = {}

    first = network.register_forward_pre_hook(before, with_kwargs=True)  # before the recorder's
    last = None
    try:
        with recorder:
            last = network.register_forward_hook(after, with_kwargs=True)
            result.output = pipe(**call)
    finally:
        first.remove()
        if last is not None:
            last.remove()
    if calls[0] != length:
        raise RuntimeError(
            f"the pipeline called the network {calls[0]} times for {length} steps; recording "
            "by step needs one call per step"
        )
    images = result.output.images
    count = len(images)
    heads = recorder.attention_heads()
    for step in wanted:
        result.features[step] = Features(
            {n: _half(raw[step][n], count, branch) for n in names}, heads
        )
    return result


def _make_recorder(kind: str, network: nn.Module, names, catalogue, output_device):
    """The gated recorder for a backbone (no early exit: the pipeline needs every output)."""
    if kind in ("flux", "sd3"):
        # the grid is set from each recorded call's input (see _joint_grid)
        return _GatedJointRecorder(
            network, names, catalogue, (1, 1), early_exit=False, output_device=output_device
        )
    return _GatedRecorder(network, names, catalogue, early_exit=False, output_device=output_device)


def _joint_grid(module: nn.Module, args, kwargs) -> tuple[int, int]:
    """(h, w) of a FLUX or SD3 call's image-token grid."""
    hidden = args[0] if args else kwargs["hidden_states"]
    if hasattr(module, "single_transformer_blocks"):  # FLUX: packed tokens, ids (L, 3)
        ids = kwargs.get("img_ids")
        ids = ids[0] if ids.ndim == 3 else ids  # older pipelines pass (B, L, 3)
        return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    patch = int(module.config.patch_size)
    return hidden.shape[-2] // patch, hidden.shape[-1] // patch


def _half(value: Tensor, images: int, branch: str) -> Tensor:
    """The ``branch`` half of a network batch of ``2 * images`` (guidance) or all of
    ``images`` (no guidance: only ``"cond"`` and ``"both"`` exist)."""
    if value.shape[0] == images:
        if branch == "uncond":
            raise InvalidValue(
                "branch",
                "{branch} 'uncond': this run used no classifier-free guidance (one network "
                "batch per image); use 'cond' or a guidance_scale above 1",
            )
        return value
    if value.shape[0] != 2 * images:
        raise RuntimeError(
            f"a network batch of {value.shape[0]} for {images} images is neither 1 nor 2 per image"
        )
    if branch == "both":
        return value
    return value[images:] if branch == "cond" else value[:images]


__all__ = ["BRANCHES", "GeneratedFeatures", "check_steps", "generate_with_features", "loop_length"]
