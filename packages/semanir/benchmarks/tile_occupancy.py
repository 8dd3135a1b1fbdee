"""How many attention tiles real SemanIR dictionaries leave empty (the ``tiles`` backend skips
those), with the windows' tokens in raster order and reordered along their first principal
component (neighbours close in feature space become close in the order).

    python packages/semanir/benchmarks/tile_occupancy.py [--model DIR_OR_NAME] [--quick]
        [--data-root DIR] [--out DIR]

The features are the stage inputs of a trained model (the bundled gray denoiser by default)
restoring Set12 images with sigma-25 noise. Per window size (8: the model's own; 16 and 32:
the same features cut into larger windows, the base and small models' sizes) and per K (N/4,
N/8, N/16), ``knn_graph`` builds the dictionary as a stage does, and the share of
(query tile x key tile) blocks that hold at least one neighbour pair is counted for tiles of
16, 32 and 64 tokens. Writes ``<out>/tile_occupancy.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
from einops import rearrange

from common_kernels import knn_graph, window_partition
from common_kernels.dictionary import neighbour_pairs_per_tile
from common_kernels.runtime.bench import write_report
from common_kernels.runtime.cli import check_benchmark_setup
from semanir.inference import load_model
from semanir.io import read_image
from semanir.models.semanir import SemanIRStage

HERE = Path(__file__).resolve().parent


def _default_data_root() -> Path:
    """eval_set12.py's data folder rule (``$SEMANIR_DATA`` or ``../shared/data``)."""
    spec = importlib.util.spec_from_file_location("semanir_bench_eval", HERE / "eval_set12.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.default_data_root()


WINDOWS = (8, 16, 32)
K_FRACTIONS = (4, 8, 16)  # K = N / fraction
TILES = (16, 32, 64)
SIGMA = 25.0


def stage_inputs(model: torch.nn.Module, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """The (1, C, H, W) input of every stage of ``model`` restoring each noisy image."""
    captured: list[torch.Tensor] = []
    hooks = [
        stage.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
        for stage in model.modules()
        if isinstance(stage, SemanIRStage)
    ]
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.inference_mode():
            for image in images:
                noise = torch.randn(image.shape, generator=generator) * (SIGMA / 255)
                model(image + noise)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def principal_order(windows: torch.Tensor) -> torch.Tensor:
    """(B', N, C) -> (B', N) permutation sorting each window's tokens by their projection on
    the window's first principal component."""
    centred = windows - windows.mean(dim=1, keepdim=True)
    _, _, basis = torch.pca_lowrank(centred, q=1, center=False)  # (B', C, 1)
    return (centred @ basis).squeeze(-1).argsort(dim=-1)


def occupied_share(idx: torch.Tensor, n: int, tile: int) -> float:
    """Share of (tile x tile) blocks of the (B', N, K) lists that hold a neighbour pair."""
    pairs = neighbour_pairs_per_tile(idx.unsqueeze(1), n, tile, tile)
    return (pairs > 0).float().mean().item()


def relabel(idx: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The lists of (B', N, K) ``idx`` with every window's tokens put in ``order``: row r of
    the result lists, as new positions, the neighbours of old token ``order[r]``."""
    position = order.argsort(dim=-1)  # (B', N): new position of each old token
    rows = idx.gather(1, order.unsqueeze(-1).expand_as(idx))  # (B', N, K) old ids, new rows
    return position.gather(1, rows.flatten(1)).view_as(idx)


def measure(features: list[torch.Tensor]) -> list[dict]:
    rows = []
    for window in WINDOWS:
        n = window * window
        for fraction in K_FRACTIONS:
            k = n // fraction
            shares = {
                (tile, order): [] for tile in TILES if tile < n for order in ("raster", "pca")
            }
            for feats in features:
                if feats.shape[-1] % window or feats.shape[-2] % window:
                    continue
                windows = window_partition(rearrange(feats, "b c h w -> b h w c"), window)
                idx = knn_graph(windows, k, similarity="cosine")  # (B', N, K)
                reordered = relabel(idx, principal_order(windows.float()))
                for tile, order in shares:
                    lists = idx if order == "raster" else reordered
                    shares[tile, order].append(occupied_share(lists, n, tile))
            for tile in sorted({t for t, _ in shares}):
                raster, pca = shares[tile, "raster"], shares[tile, "pca"]
                if raster:
                    rows.append({
                        "window": window, "n": n, "k": k, "tile": tile,
                        "occupied_raster": sum(raster) / len(raster),
                        "occupied_pca": sum(pca) / len(pca), "stages": len(raster),
                    })  # fmt: skip
    return rows


def markdown(rows: list[dict], model: str) -> str:
    lines = [
        f"Occupied tiles of real SemanIR dictionaries ({model}, Set12 with sigma {SIGMA:g} "
        "noise; stage inputs cut into windows): share of (query tile x key tile) blocks "
        "holding at least one neighbour pair, raster order / tokens reordered along the "
        "window's first principal component.",
        "",
        "| window | N | K | K/N | tile | occupied, raster | occupied, PCA order |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['window']} | {r['n']} | {r['k']} | 1/{r['n'] // r['k']} | {r['tile']} "
            f"| {r['occupied_raster']:.3f} | {r['occupied_pca']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="save_pretrained folder (default: bundled)")
    parser.add_argument("--quick", action="store_true", help="2 images instead of 4")
    parser.add_argument("--data-root", type=Path, default=None, help="holds set12/")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    args = parser.parse_args(argv)
    check_benchmark_setup("tile_occupancy.py", "semanir", folders={"--out": args.out})
    data_root = args.data_root or _default_data_root()
    paths = sorted((data_root / "set12").glob("*.png"))[: 2 if args.quick else 4]
    if not paths:
        parser.error(f"--data-root {data_root}: no set12/*.png there")
    model = load_model(args.model).eval()
    images = [read_image(p, channels="gray")[None] for p in paths]
    rows = measure(stage_inputs(model, images))
    name = args.model or "bundled semanir_tiny_denoise_gray"
    report = {"model": name, "rows": rows}
    write_report(args.out / "tile_occupancy", report, markdown(rows, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
