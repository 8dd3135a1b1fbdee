"""Recording U-Net activations with forward hooks and a recording attention processor.

Nothing in diffusers is patched: :class:`ActivationRecorder` adds forward hooks to the modules
that produce the requested activations and, only on the attention modules whose q/k/v or maps
are requested, swaps in :class:`RecordingAttnProcessor`; everything is restored on exit. Other
attention layers keep their own (fused SDPA) processor, and the recording processor computes
the layer output with the same SDPA call, so recording never changes any other activation.
Once the last requested activation is recorded the forward pass is stopped (early exit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffeat.catalogue import ATTENTION_KINDS, LayerSpec, build_catalogue, check_names
from diffeat.presets import ALL, layer_selection


class EarlyExit(Exception):
    """Raised inside the U-Net once every requested activation has been recorded."""


class MissingActivationsError(RuntimeError):
    """Requested activations that never fired during a forward pass."""


def tokens_to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """``(B, L, C)`` tokens in raster order -> ``(B, C, h, w)``; ``L`` must equal ``h * w``."""
    batch, length, channels = tokens.shape
    if length != height * width:
        raise ValueError(f"{length} tokens do not fill a {height}x{width} grid")
    return tokens.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, h, w)


def probs_to_map(probs: Tensor, height: int, width: int) -> Tensor:
    """Attention probabilities ``(B, heads, L, S)`` -> ``(B, heads*S, h, w)``."""
    batch, heads, length, keys = probs.shape
    if length != height * width:
        raise ValueError(f"{length} queries do not fill a {height}x{width} grid")
    maps = probs.transpose(2, 3)  # (B, heads, S, L)
    return maps.reshape(batch, heads * keys, height, width)  # (B, heads*S, h, w)


def _check_attention(attn: nn.Module, path: str) -> None:
    """Raise for attention variants the recording processor does not reproduce."""
    problems = []
    if getattr(attn, "fused_projections", False) or not hasattr(attn, "to_q"):
        problems.append("fused q/k/v projections (call unet.unfuse_qkv_projections())")
    for attr in ("spatial_norm", "group_norm", "norm_q", "norm_k"):
        if getattr(attn, attr, None) is not None:
            problems.append(f"{attr}")
    if getattr(attn, "add_k_proj", None) is not None:
        problems.append("added key/value projections")
    if problems:
        raise ValueError(f"{path}: cannot record this attention layer: {', '.join(problems)}")


def _check_unchunked(block: nn.Module, name: str) -> None:
    """Raise when ``block`` runs its feed-forward in chunks (the GEGLU then sees token slices)."""
    if getattr(block, "_chunk_size", None) is not None:
        raise ValueError(
            f"{name}: cannot record the GEGLU output while feed-forward chunking is enabled; "
            "turn it off first (block.set_chunk_feed_forward(None))"
        )


class RecordingAttnProcessor:
    """Attention processor that records q/k/v (right after to_q/to_k/to_v) and the map.

    With ``plain=False`` the output is computed with ``F.scaled_dot_product_attention`` exactly as
    diffusers' ``AttnProcessor2_0`` does (the map, when requested, is computed beside it with
    ``Attention.get_attention_scores``), so downstream activations are bit-identical to an
    unrecorded pass. ``plain=True`` computes the output from the explicit probabilities like
    diffusers' ``AttnProcessor`` (the official code's behaviour).

    Args:
        recorder: the owning recorder (receives the tensors and the token grid size).
        names: ``{"q"|"k"|"v"|"map": activation name}`` to record.
        plain: explicit softmax attention instead of SDPA.
    """

    def __init__(self, recorder: ActivationRecorder, names: dict[str, str], plain: bool):
        self.recorder = recorder
        self.names = names
        self.plain = plain

    def _emit_tokens(self, part: str, tokens: Tensor) -> None:
        if part in self.names:
            height, width = self.recorder.token_grid(tokens.shape[1])
            self.recorder.record(self.names[part], tokens_to_map(tokens, height, width))

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args,
        **kwargs,
    ) -> Tensor:
        if hidden_states.ndim != 3:
            raise ValueError("RecordingAttnProcessor expects (B, L, C) hidden states")
        residual = hidden_states
        batch, length, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        keys = context.shape[1]
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        self._emit_tokens("q", query)
        self._emit_tokens("k", key)
        self._emit_tokens("v", value)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        if self.plain or "map" in self.names:
            mask3 = attn.prepare_attention_mask(attention_mask, keys, batch)
            q3, k3 = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key)  # (B*heads, L, d)
            probs = attn.get_attention_scores(q3, k3, mask3)  # (B*heads, L, S)
            if "map" in self.names:
                height, width = self.recorder.token_grid(length)
                maps = probs.reshape(batch, heads, length, keys)  # (B, heads, L, S)
                self.recorder.record(self.names["map"], probs_to_map(maps, height, width))
        if self.plain:
            out = torch.bmm(probs, attn.head_to_batch_dim(value))  # (B*heads, L, d)
            out = attn.batch_to_head_dim(out)  # (B, L, heads*d)
        else:
            if attention_mask is not None:
                attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
                attention_mask = attention_mask.view(batch, heads, -1, attention_mask.shape[-1])
            q4 = query.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, heads, L, d)
            k4 = key.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, heads, S, d)
            v4 = value.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, heads, S, d)
            out = F.scaled_dot_product_attention(
                q4, k4, v4, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )  # (B, heads, L, d)
            out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim)  # (B, L, heads*d)
            out = out.to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class ActivationRecorder:
    """Context manager recording named U-Net activations during one forward pass.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        names: activation names to record (see :mod:`diffeat.catalogue`), ``"all"`` (the
            whole U-Net catalogue) or a preset name.
        catalogue: the U-Net's catalogue (built when omitted).
        early_exit: raise :class:`EarlyExit` once the last requested activation is recorded.
        square_tokens: reshape token sequences with ``h = w = sqrt(L)`` like the official code
            (errors on non-square grids) instead of the transformer's known input size.
        plain_attention: when any attention map is requested, compute every attention layer
            with explicit softmax (diffusers' ``AttnProcessor``), like the official code.
        output_device: move recorded tensors there (e.g. ``"cpu"`` to spare GPU memory).
        detach: store tensors detached from the autograd graph (False: keep it, for a pass run
            with gradients enabled, so a loss on the features reaches the model's parameters).
    """

    def __init__(
        self,
        unet: nn.Module,
        names: Sequence[str] | str,
        catalogue: Sequence[LayerSpec] | None = None,
        *,
        early_exit: bool = True,
        square_tokens: bool = False,
        plain_attention: bool = False,
        output_device: torch.device | str | None = None,
        detach: bool = True,
    ):
        self.unet = unet
        self.detach = detach
        self.catalogue = list(catalogue) if catalogue is not None else build_catalogue(unet)
        if isinstance(names, str):
            names = layer_selection(names, "names")
            if names == (ALL,):
                names = tuple(s.name for s in self.catalogue)
        self.specs = check_names(names, self.catalogue)
        self.early_exit = early_exit
        self.square_tokens = square_tokens
        self.plain_attention = plain_attention and any(s.kind.endswith("map") for s in self.specs)
        self.output_device = output_device
        self.features: dict[str, Tensor] = {}
        self._wanted = {s.name for s in self.specs}
        self._grid: tuple[int, int] | None = None
        self._handles: list = []
        self._processors: dict[nn.Module, object] = {}
        self._heads: dict[str, int] = {}
        # DiTs (diffusers PixArt-style transformers) tokenise their input in patches
        is_dit = hasattr(unet, "pos_embed") and hasattr(unet, "transformer_blocks")
        self._patch = int(unet.config.patch_size) if is_dit else 0

    # -- recording ---------------------------------------------------------------------------
    def record(self, name: str, value: Tensor) -> None:
        """Store one activation (detached unless ``detach=False``); stop the pass when it was
        the last one missing."""
        if self.detach:
            value = value.detach()
        if self.output_device is not None:
            value = value.to(self.output_device)
        self.features[name] = value
        if self.early_exit and self._wanted.issubset(self.features):
            raise EarlyExit

    def token_grid(self, length: int) -> tuple[int, int]:
        """(h, w) of the current transformer's token grid holding ``length`` tokens."""
        if self.square_tokens:
            side = math.isqrt(length)
            if side * side != length:
                raise ValueError(
                    f"faithful mode reshapes token sequences to h = w = sqrt(L) like the official "
                    f"code, but this input gives L = {length} tokens; use faithful=False for "
                    "non-square inputs"
                )
            return side, side
        if self._grid is None or self._grid[0] * self._grid[1] != length:
            raise RuntimeError(f"no transformer input grid known for {length} tokens")
        return self._grid

    def missing(self) -> list[str]:
        """Requested names not recorded (in request order)."""
        return [s.name for s in self.specs if s.name not in self.features]

    def raise_if_missing(self) -> None:
        missing = self.missing()
        if missing:
            raise MissingActivationsError(
                f"requested activations never fired during the U-Net pass: {missing} (the "
                "modules exist but were not called; was the U-Net forward changed?)"
            )

    def attention_heads(self) -> dict[str, int]:
        """Head count of every requested attention activation."""
        return dict(self._heads)

    # -- hooks -------------------------------------------------------------------------------
    def _module(self, path: str) -> nn.Module:
        return self.unet.get_submodule(path) if path else self.unet

    def _grid_hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        patch = self._patch if module is self.unet else 1  # a DiT's tokens are patches
        self._grid = (hidden.shape[-2] // patch, hidden.shape[-1] // patch)

    def _output_hook(self, spec: LayerSpec):
        def hook(module, args, output):
            if spec.kind in ("vit-out", "dit-out"):
                output = output[0] if isinstance(output, tuple) else output.sample
            if spec.kind in ("block-out", "ffn-inner", "patch-embed"):
                output = tokens_to_map(output, *self.token_grid(output.shape[1]))
            else:
                output = output.clone()  # later in-place ops (e.g. FreeU) must not alter it
            self.record(spec.name, output)

        return hook

    def _input_hook(self, spec: LayerSpec):
        def hook(module, args, kwargs):
            sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            self.record(spec.name, sample.clone())

        return hook

    def __enter__(self) -> ActivationRecorder:
        self.features = {}
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Restore the U-Net; after a pass that ended normally, raise for names that never fired."""
        self._remove()
        if exc_type is None:
            self.raise_if_missing()
        return exc_type is EarlyExit

    def _install(self) -> None:
        from diffusers.models.attention_processor import Attention, AttnProcessor

        attention: dict[str, dict[str, str]] = {}
        grids: set[str] = set()
        for spec in self.specs:
            if spec.kind in ATTENTION_KINDS:
                part = spec.kind.split("-")[1]
                attention.setdefault(spec.module, {})[part] = spec.name
            elif spec.kind == "unet-in":
                handle = self.unet.register_forward_pre_hook(
                    self._input_hook(spec), with_kwargs=True
                )
                self._handles.append(handle)
            else:
                module = self._module(spec.module)
                if spec.kind == "ffn-inner":
                    _check_unchunked(self._module(spec.module.rsplit(".ff.", 1)[0]), spec.name)
                self._handles.append(module.register_forward_hook(self._output_hook(spec)))
            if self._patch:  # a DiT: one token grid, the patches of the model's input
                grids.add("")
            elif spec.block is not None:
                grids.add(spec.module.split(".transformer_blocks.")[0])
        for path in sorted(grids):
            module = self._module(path)
            self._handles.append(
                module.register_forward_pre_hook(self._grid_hook, with_kwargs=True)
            )
        for path, parts in attention.items():
            attn = self._module(path)
            _check_attention(attn, path)
            for name in parts.values():
                self._heads[name] = attn.heads
            self._swap_processor(attn, RecordingAttnProcessor(self, parts, self.plain_attention))
        if self.plain_attention:
            for module in self.unet.modules():
                if isinstance(module, Attention) and module not in self._processors:
                    self._swap_processor(module, AttnProcessor())

    def _swap_processor(self, attn: nn.Module, processor) -> None:
        self._processors[attn] = attn.processor
        attn.set_processor(processor)

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for attn, processor in self._processors.items():
            attn.set_processor(processor)
        self._processors = {}
        self._grid = None


class HookRecorder(ActivationRecorder):
    """What the recorders of diffusion transformers that swap nothing share: a pre-hook on the
    network (``_pre``: the grid of the pass, the ``in`` activation), attention maps computed
    beside a layer's processor by a pre-hook on it (``_map``), outputs (``_out``) and token
    activations (``_tokens``, after :meth:`_check_tokens`) by forward hooks; a subclass defines
    those and :attr:`map_kinds`.
    """

    map_kinds: ClassVar[tuple[str, ...]]

    def _check_tokens(self, spec: LayerSpec) -> None:
        """Refuse a token activation this pass cannot record as it is (fused projections,
        a chunked feed-forward) and note the attention heads of q/k/v."""

    def _install(self) -> None:
        self._handles.append(self.unet.register_forward_pre_hook(self._pre, with_kwargs=True))
        for spec in self.specs:
            if spec.kind == "in":
                continue  # the network's pre-hook records it
            module = self._module(spec.module)
            if spec.kind in self.map_kinds:
                self._heads[spec.name] = module.heads
                handle = module.register_forward_pre_hook(self._map(spec), with_kwargs=True)
            elif spec.kind == "out":
                handle = module.register_forward_hook(self._out(spec))
            else:
                self._check_tokens(spec)
                handle = module.register_forward_hook(self._tokens(spec))
            self._handles.append(handle)
