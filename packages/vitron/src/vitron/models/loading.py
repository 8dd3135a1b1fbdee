"""Loading without a random copy: a skeleton with parameters on the meta device, then the
saved tensors assigned in place, one at a time, in the requested dtype on the target device.

The skeleton comes from accelerate's ``init_empty_weights(include_buffers=False)``
(:func:`empty_weights`): every parameter is moved to the meta device as it is registered, so the
initialisers of ``nn.Linear``, transformers and open_clip run on tensors without storage;
buffers (rotary frequencies, position ids) stay real, because they are not saved and are
computed at construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Build modules directly in ``dtype`` (``None``: leave torch's default dtype)."""
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def empty_weights() -> contextlib.AbstractContextManager[None]:
    """Modules built in this block get their parameters on the meta device (no memory, no
    initialisation on real storage); buffers stay real (accelerate's ``init_empty_weights``)."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def assign_safetensors(
    model: nn.Module, path: str | Path, dtype: torch.dtype, device: str | torch.device
) -> None:
    """Assign the tensors of a safetensors file to ``model``'s parameters and buffers.

    Tensors are read one at a time straight onto ``device``; floating-point ones are cast to
    ``dtype`` (peak memory: the model in ``dtype`` plus one tensor as saved). Parameters tied in
    ``model`` (one object under several names, e.g. tied embeddings) are saved once and stay
    one parameter.

    Args:
        model: a model whose parameters may be on the meta device (see :func:`empty_weights`).
        path: the safetensors file.
        dtype: dtype of the floating-point tensors.
        device: where the tensors go.
    """
    expected = model.state_dict(keep_vars=True)
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=str(device)) as weights:
        names = weights.keys()
        unexpected = sorted(set(names) - set(expected))
        if unexpected:
            raise ValueError(
                f"{path} holds {len(unexpected)} tensor(s) this model does not have, e.g. "
                f"{unexpected[:3]} (saved from a different architecture or vitron version?)"
            )
        for name in names:
            tensor = weights.get_tensor(name)
            tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
            if tensor.shape != expected[name].shape:
                raise ValueError(
                    f"{path}: {name} has shape {tuple(tensor.shape)}, the model's is "
                    f"{tuple(expected[name].shape)}"
                )
            is_param = isinstance(expected[name], nn.Parameter)
            state[name] = nn.Parameter(tensor, expected[name].requires_grad) if is_param else tensor
    for name, value in expected.items():  # a tied parameter saved under another of its names
        if name not in state:
            twin = next((n for n in state if expected[n] is value), None)
            if twin is not None:
                state[name] = state[twin]
    model.load_state_dict(state, strict=False, assign=True)


def meta_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters still on the meta device (never loaded)."""
    return [name for name, param in model.named_parameters() if param.is_meta]
