"""ONNX export of a restoration model: :func:`export_onnx` (``semanir export MODEL OUT.onnx``).

The graph takes ``image`` (B, C, H, W) float32 in [0, 1] of any batch, height and width and
gives ``restored`` (B, C_out, H * scale, W * scale) clamped to [0, 1], what
:func:`semanir.restore` gives (whole image, fp32). SemanIR's own forward exports at one fixed
size only: ``common_kernels.window_partition``/``window_reverse`` check their sizes as Python
ints (a dynamic size fails them), its inference path splits the windows into groups whose count
depends on the size, and its padding is skipped by a branch on the size. So a SemanIR model is
exported as :class:`SizeGenericSemanIR`: the same modules and weights, every size-dependent step
written in ops that stay symbolic (the reflect padding to ``window x 2**levels`` is index
arithmetic inside the graph). The key-semantic dictionary is the same set: ONNX ``TopK`` over
the stage's window similarities breaks ties towards the lower index, as
``common_kernels.knn_mask`` does, and the attention of each query is restricted to it by an
additive ``-inf`` mask beside the position bias. DnCNN exports as it is.

``onnx`` and ``onnxruntime`` (the ``onnx`` extra; the exporter also needs ``onnxscript``) are
imported when a function here needs them.
"""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common_kernels.runtime.errors import InvalidArgument, literal
from common_kernels.runtime.files import atomic_write

from .inference import check_inference_options, load_model, read_model_config
from .models import DnCNN, SemanIR
from .models.semanir import SemanIRStage

if TYPE_CHECKING:
    import onnxruntime

DEFAULT_OPSET = 18  # torch.onnx's own opset
MIN_OPSET = 18  # below it torch.onnx converts with onnx's C API, which may fail and keep 18
INPUT_NAME = "image"
OUTPUT_NAME = "restored"
EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1: the example is larger


def window_tokens(x: Tensor, window: int) -> Tensor:
    """(B, C, H, W) features, H and W multiples of ``window`` -> (B*nW, window**2, C) tokens in
    ``common_kernels.window_partition`` order (a fresh tensor, never a view of ``x``)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // window, window, w // window, window)  # (B, C, nh, wh, nw, ww)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, c).clone()  # (B*nW, N, C)


def window_map(tokens: Tensor, window: int, shape: torch.Size) -> Tensor:
    """Inverse of :func:`window_tokens`: (B*nW, window**2, C) -> (B, C, H, W) of ``shape``."""
    b, c, h, w = shape
    x = tokens.reshape(b, h // window, w // window, window, window, c)  # (B, nh, nw, wh, ww, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def reflect_positions(size: int, padded: int) -> Tensor:
    """Source index of each of ``padded`` positions mirroring a length-``size`` axis, repeatedly
    for pads longer than the axis (``semanir.models.semanir.reflect_indices``, with the period
    a tensor so that the graph keeps ``size`` symbolic; a length-1 axis repeats its value)."""
    positions = torch.arange(padded)
    period = (torch.zeros((), dtype=torch.long) + (2 * size - 2)).clamp(min=1)
    folded = positions % period
    return torch.where(folded < size, folded, period - folded)


def reflect_pad(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad the bottom and right of (B, C, H, W) ``x`` to multiples of ``multiple``."""
    height, width = x.shape[-2:]
    rows = reflect_positions(height, (height + multiple - 1) // multiple * multiple)
    cols = reflect_positions(width, (width + multiple - 1) // multiple * multiple)
    return x.index_select(-2, rows).index_select(-1, cols)  # (B, C, H', W')


def neighbour_mask(tokens: Tensor, k: int, similarity: str) -> Tensor:
    """(B', N, C) window tokens -> (B', 1, N, N) additive mask: 0 at each token's k most similar
    tokens (its dictionary), -inf elsewhere."""
    feats = F.normalize(tokens, dim=-1) if similarity == "cosine" else tokens
    sim = feats @ feats.transpose(-2, -1)  # (B', N, N)
    chosen = torch.zeros_like(sim).scatter(-1, sim.topk(k, dim=-1).indices, 1.0)
    return torch.where(chosen > 0, 0.0, float("-inf")).unsqueeze(1)  # (B', 1, N, N)


class SizeGenericSemanIR(nn.Module):
    """A SemanIR model's inference in ops that export with symbolic batch, height and width.

    Shares the model's modules (no copy); each stage's layers run through their own
    ``forward_inference`` with the dictionary given as an attention mask.

    Args:
        model: the SemanIR model.
        k: dictionary entries per query (``None`` for dense window attention).
    """

    def __init__(self, model: SemanIR, k: int | None) -> None:
        super().__init__()
        self.model = model
        self.k = k

    def stage(self, stage: SemanIRStage, x: Tensor) -> Tensor:
        """One stage on (B, C, H, W) features, H and W multiples of its window."""
        tokens = window_tokens(x, stage.window_size)  # (B*nW, N, C)
        positions = stage.positions()
        mask = None
        for index, layer in enumerate(stage.layers):
            if stage.dictionary == "layer" or (stage.dictionary == "stage" and index == 0):
                mask = neighbour_mask(tokens, self.k, stage.similarity)  # (B*nW, 1, N, N)
            bias = layer.attn.position_bias(positions)  # (heads, N, N) or None
            if mask is not None:
                bias = mask if bias is None else bias + mask  # (B*nW, heads, N, N)
            tokens = layer.forward_inference(tokens, None, bias)
        return x + stage.conv(window_map(tokens, stage.window_size, x.shape))

    def body(self, feats: Tensor) -> Tensor:
        """The U-net or columnar body on the shallow features."""
        model, stages = self.model, self.model.stages
        if model.config.architecture == "columnar":
            x = feats
            for stage in stages:
                x = self.stage(stage, x)
            return feats + model.body_conv(x)
        levels = model.config.levels
        x, skips = feats, []
        for stage, down in zip(stages[:levels], model.downs, strict=True):
            skips.append(self.stage(stage, x))
            x = down(skips[-1])  # (B, C_next, H/2, W/2)
        x = self.stage(stages[levels], x)
        ups = zip(stages[levels + 1 : 2 * levels + 1], model.ups, model.fusions, strict=True)
        for stage, up, fuse in ups:
            x = self.stage(stage, fuse(torch.cat([up(x), skips.pop()], dim=1)))
        return self.stage(stages[-1], x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H * upscale, W * upscale), as ``SemanIR.forward``."""
        model, config = self.model, self.model.config
        height, width = x.shape[-2:]
        padded = reflect_pad(x, model.pad_multiple)  # (B, C_in, H', W')
        feats = model.shallow((padded - model.img_mean) * config.img_range)
        recon = model.reconstruct(self.body(feats)) / config.img_range
        if model.upscale == 1 and model.in_channels == model.out_channels:
            out = padded + recon
        else:
            out = recon + model.img_mean
        return out[..., : height * model.upscale, : width * model.upscale]


class ClampedRestorer(nn.Module):
    """``net``'s output clamped to [0, 1], what :func:`semanir.restore` returns."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).clamp(0.0, 1.0)


def exportable(model: SemanIR | DnCNN, k: int | None = None) -> nn.Module:
    """The module :func:`export_onnx` exports for ``model`` (eval mode, ``k`` as in
    :func:`semanir.restore`)."""
    if isinstance(model, SemanIR):
        if model.config.dictionary != "dense" and k is None:
            k = model.config.resolved_inference_k
        net = SizeGenericSemanIR(model, k)
    else:
        net = model
    return ClampedRestorer(net).eval()


def onnx_module(name: str) -> ModuleType:
    """Import ``onnx``, ``onnxscript`` or ``onnxruntime``; without it, an ``ImportError`` that
    names the extra."""
    try:
        return import_module(name)
    except ImportError as error:
        raise ImportError(f"{error}: ONNX export needs pip install 'semanir[onnx]'") from None


def max_opset() -> int:
    """The newest opset the installed ``onnx`` knows."""
    return onnx_module("onnx").defs.onnx_opset_version()


def check_export_options(path: str | os.PathLike, opset: int) -> Path:
    """Check the output path and the opset (before any model loads); returns the path.

    Raises:
        InvalidArgument: ``opset`` out of range, ``path`` not ``*.onnx``, a folder, or in a
            folder that does not exist.
    """
    newest = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise InvalidArgument("opset", f"must be an int in [{MIN_OPSET}, {newest}], got {opset!r}")
    target = Path(path)
    if target.suffix.lower() != ".onnx":
        raise InvalidArgument("path", f"must name a .onnx file, got {literal(os.fspath(path))}")
    if target.is_dir():
        raise InvalidArgument("path", f"{literal(target)} is a folder; name a .onnx file")
    if not target.parent.is_dir():
        raise InvalidArgument("path", f"the folder {literal(target.parent)} does not exist")
    return target


def export_onnx(
    model: str | os.PathLike | SemanIR | DnCNN,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    k: int | None = None,
) -> Path:
    """Export a model to an ONNX file with dynamic batch, height and width.

    The graph's input ``image`` is (B, C_in, H, W) float32 in [0, 1]; its output ``restored``
    is (B, C_out, H * scale, W * scale), clamped to [0, 1]: :func:`semanir.restore` with
    ``tile=None`` in fp32. The file is checked with ``onnx.checker`` and written atomically
    (an existing file is replaced).

    Args:
        model: a bundled model's name, a ``save_pretrained`` folder, a hub id, or a loaded
            SemanIR or DnCNN model.
        path: the ``.onnx`` file to write (its folder must exist).
        opset: the ONNX opset, from 18 to the newest the installed ``onnx`` knows.
        k: dictionary entries per query baked into the graph (SemanIR with a key-semantic
            dictionary; ``None``: the model's inference k).

    Returns:
        The path written.
    """
    target = check_export_options(path, opset)
    if isinstance(model, nn.Module):
        if not isinstance(model, SemanIR | DnCNN):
            raise InvalidArgument(
                "model", f"must be a SemanIR or DnCNN model, got {type(model).__name__}"
            )
        config = model.config.to_dict()
    else:
        config = read_model_config(model)
    check_inference_options(config, tile=None, tile_overlap=0, k=k)
    if not isinstance(model, nn.Module):
        model = load_model(model)
    was_training = model.training
    try:
        program = _export_program(exportable(model, k), model.in_channels, opset)
    finally:
        model.train(was_training)
    with atomic_write(target) as temp:
        program.save(temp, external_data=False)
        _check_model(temp)
    return target


def _export_program(net: nn.Module, channels: int, opset: int):
    """``torch.onnx.export`` (dynamo) of ``net``, in eval mode, with symbolic batch, height and
    width."""
    from torch.export import Dim

    onnx_module("onnxscript")  # the exporter's translator
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(EXAMPLE_BATCH, channels, 19, 27, generator=generator)  # (B, C, H, W)
    sizes = {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}
    with torch.no_grad():
        return torch.onnx.export(
            net.eval(), (example,), dynamo=True, opset_version=opset, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=(sizes,),
        )  # fmt: skip


def _check_model(path: Path) -> None:
    """``onnx.checker`` on the written file, shapes inferred (``full_check``)."""
    onnx = onnx_module("onnx")
    onnx.checker.check_model(onnx.load(os.fspath(path)), full_check=True)


def onnx_session(
    path: str | os.PathLike, threads: int | None = None
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session of an exported file (``threads``: intra-op threads)."""
    onnxruntime = onnx_module("onnxruntime")
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        os.fspath(path), options, providers=["CPUExecutionProvider"]
    )


def run_onnx(session: onnxruntime.InferenceSession, image: Tensor) -> Tensor:
    """The exported model on (B, C, H, W) ``image`` through ``session``, as a float32 tensor."""
    array = image.detach().to("cpu", torch.float32).numpy()
    (restored,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(array)})
    return torch.from_numpy(restored)
