"""The result of an extraction: ``{name: (B, C, h, w)}`` plus the attention head counts."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from diffeat.catalogue import attention_map_view


def check_not_empty(tensor: Tensor, argument: str) -> Tensor:
    """``tensor`` unchanged, unless it holds no value (a zero-size dimension).

    Args:
        tensor: the tensor.
        argument: the argument named in the error.

    Raises:
        ValueError: ``"{argument}: empty tensor (shape)"``, as every check of the repository says.
    """
    if tensor.numel() == 0:
        raise ValueError(f"{argument}: empty tensor {tuple(tensor.shape)}")
    return tensor


class Features(dict):
    """``{activation name: (B, C, h, w) tensor}`` in request order, with head counts attached.

    A plain ``dict`` (every dict operation works and gives plain dicts); ``heads`` maps each
    returned attention activation (``*-self-q|k|v``, ``*-cross-q``, ``*-self-map``,
    ``*-cross-map``) to its attention's head count. Maps keep the (B, heads*keys, h, w) layout
    of every other feature (channel ``head * keys + key``); :meth:`attention_map` gives the
    (B, heads, h*w, keys) probabilities.

    Args:
        features: the tensors.
        heads: ``{name: heads}`` for the attention activations among them.
    """

    def __init__(self, features: Mapping[str, Tensor] = (), heads: Mapping[str, int] = ()):
        super().__init__(features)
        self.heads: dict[str, int] = {n: int(h) for n, h in dict(heads).items() if n in self}

    def attention_map(self, name: str) -> Tensor:
        """The ``*-map`` feature ``name`` as attention probabilities (B, heads, h*w, keys).

        A view of the stored tensor (no copy); reshaping it back gives the stored feature.
        """
        if name not in self:
            raise KeyError(f"name: {name!r} is not among the returned features {list(self)}")
        if not name.endswith("-map") or name not in self.heads:
            raise ValueError(f"name: {name!r} is not an attention map (names ending in '-map')")
        return attention_map_view(self[name], self.heads[name])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n!r}: {tuple(v.shape)}" for n, v in self.items())
        return f"Features({{{shapes}}}, heads={self.heads})"
