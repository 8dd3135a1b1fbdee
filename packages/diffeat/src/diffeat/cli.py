"""The ``diffeat`` command.

diffeat layers (--model PATH_OR_HUB_ID | --config sd15|sd21|sdxl|...) [--image-size S|HxW]
diffeat extract IMG... --model M [--preset P | --layers a,b | --all] -o feats.safetensors
diffeat probe IMG... --model M [--preset P | --layers a,b | --all] [-o probe.json]
diffeat pca IMG... --model M [--preset P | --layers a,b] -o OUTDIR   (or --features FILE)
diffeat tiny-model DIR --kind sd15|sdxl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from diffeat import __version__
from diffeat.aggregate import RESIZE_MODES, aggregate
from diffeat.capture import MissingActivationsError
from diffeat.catalogue import list_layers
from diffeat.configs import KINDS, UNET_CONFIGS, save_tiny_model, unet_config
from diffeat.extractor import DTYPES, LATENT_MODES, FeatureExtractor
from diffeat.io import atomic_write_bytes, load_features, load_image, parse_size, save_features
from diffeat.presets import PRESETS, get_preset, selection_names
from diffeat.probes import PROBES, probe_all
from diffeat.viz import save_pca_pngs


def add_model_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--model",
        required=required,
        help="diffusers SD/SDXL repository: hub id or local folder (see `diffeat tiny-model`)",
    )
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--preset", choices=sorted(PRESETS), help="a paper selection")
    selection.add_argument(
        "--layers",
        help="comma-separated activation names (vae-out and the U-Net catalogue), or one of "
        f"{', '.join(selection_names())}",
    )
    selection.add_argument(
        "--all", action="store_true", help="the whole catalogue (same as --layers all)"
    )
    parser.add_argument("--timestep", type=int, default=50, help="diffusion timestep (default 50)")
    parser.add_argument("--prompt", default="", help="text prompt for every image")
    parser.add_argument(
        "--image-size",
        default=None,
        help="resize images to S or HxW (default: the preset's resolution with --preset, "
        "else the images' own size, which must be a multiple of the model's factor)",
    )
    parser.add_argument("--latent", choices=LATENT_MODES, default="sample")
    parser.add_argument("--faithful", action="store_true", help="official-code quirks on")
    parser.add_argument("--no-early-exit", action="store_true", help="always run the full U-Net")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent sample and noise")
    parser.add_argument("--batch-size", type=int, default=1, help="images per U-Net pass")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffeat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"diffeat {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    layers = commands.add_parser("layers", help="print the activation catalogue with shapes")
    source = layers.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id or local folder (only its unet config is read)")
    source.add_argument("--config", choices=sorted(UNET_CONFIGS), help="a bundled U-Net config")
    layers.add_argument("--image-size", default=None, help="S or HxW (default: native size)")
    layers.add_argument("--text-tokens", type=int, default=None, help="prompt length (77)")
    layers.add_argument("--contains", default=None, help="show names containing this only")

    extract = commands.add_parser("extract", help="extract features to a safetensors file")
    extract.add_argument("images", nargs="+", type=Path)
    extract.add_argument("-o", "--output", type=Path, required=True, help=".safetensors file")
    extract.add_argument("--resize", default=None, help="resize every feature to S or HxW")
    extract.add_argument("--resize-mode", choices=RESIZE_MODES, default="bilinear")
    extract.add_argument("--concat", action="store_true", help="one concatenated 'features' key")
    add_model_options(extract)

    probe = commands.add_parser("probe", help="noise / granularity / locality per activation")
    probe.add_argument("images", nargs="+", type=Path)
    probe.add_argument("--probes", default=",".join(PROBES), help=f"subset of {','.join(PROBES)}")
    probe.add_argument("-o", "--output", type=Path, default=None, help="write results as JSON")
    add_model_options(probe)

    pca = commands.add_parser("pca", help="PCA-to-RGB PNGs of activations")
    pca.add_argument("images", nargs="*", type=Path)
    pca.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    pca.add_argument("--features", type=Path, default=None, help="a file from `diffeat extract`")
    pca.add_argument("--size", default=None, help="PNG size S or HxW (default: the image size)")
    add_model_options(pca, required=False)

    tiny = commands.add_parser("tiny-model", help="write a tiny random SD/SDXL model folder")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--kind", choices=KINDS, required=True)
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def selected_layers(args: argparse.Namespace) -> list[str] | str | None:
    if args.all:
        return "all"
    if args.layers:
        names = [n.strip() for n in args.layers.split(",") if n.strip()]
        if not names:
            raise ValueError("--layers: no names given")
        if len(names) == 1 and names[0] in selection_names():
            return names[0]  # "all" or a preset name
        return names
    return None


def load_extractor(args: argparse.Namespace) -> FeatureExtractor:
    image_size = parse_size(args.image_size)
    layers = selected_layers(args)
    preset = args.preset or (layers if isinstance(layers, str) and layers in PRESETS else None)
    if image_size is None and preset is not None:
        image_size = (get_preset(preset).resolution,) * 2
    return FeatureExtractor.from_pretrained(
        args.model,
        layers=layers,
        preset=args.preset,
        timestep=args.timestep,
        dtype=args.dtype,
        device=args.device,
        latent=args.latent,
        faithful=args.faithful,
        early_exit=not args.no_early_exit,
        image_size=image_size,
        seed=args.seed,
        output_device="cpu",
    )


def run_batches(extractor: FeatureExtractor, paths: Sequence[Path], args, run) -> list:
    """Call ``run(images)`` on batches of loaded images; one shared seeded generator."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: must be >= 1; got {args.batch_size}")
    results = []
    batches = [paths[i : i + args.batch_size] for i in range(0, len(paths), args.batch_size)]
    for batch in tqdm(batches, desc="batches", disable=len(batches) < 2):
        results.append(run([load_image(p) for p in batch]))
    return results


def stack_batches(parts: list[dict[str, torch.Tensor]], paths: Sequence[Path]) -> dict:
    shapes = {name: {tuple(p[name].shape[1:]) for p in parts} for name in parts[0]}
    uneven = [name for name, s in shapes.items() if len(s) > 1]
    if uneven:
        raise ValueError(
            f"images: {', '.join(map(str, paths))} give features of different sizes; pass "
            "--image-size to resize them to one size"
        )
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def processed_size(extractor: FeatureExtractor, path: Path) -> tuple[int, int]:
    """(H, W) the extractor feeds an image at ``path`` with."""
    if extractor.config.image_size is not None:
        return extractor.config.image_size
    width, height = load_image(path).size
    return height, width


def command_layers(args: argparse.Namespace) -> None:
    if args.config is not None:
        config, tokens = unet_config(args.config), args.text_tokens or 77
    else:
        from diffusers import UNet2DConditionModel

        config = UNet2DConditionModel.load_config(args.model, subfolder="unet")
        tokens = args.text_tokens
        if tokens is None:
            from transformers import CLIPTokenizer

            tokens = CLIPTokenizer.from_pretrained(
                args.model, subfolder="tokenizer"
            ).model_max_length
    list_layers(config, parse_size(args.image_size), tokens, contains=args.contains)


def command_extract(args: argparse.Namespace) -> None:
    extractor = load_extractor(args)
    generator = extractor.generator()
    parts = run_batches(
        extractor, args.images, args, lambda images: extractor(images, args.prompt, generator)
    )
    heads = dict(parts[0].heads)
    features = stack_batches(parts, args.images)
    if args.resize is not None or args.concat:
        features = aggregate(features, parse_size(args.resize), args.resize_mode, concat=False)
        if args.concat:
            features = {"features": torch.cat(list(features.values()), dim=1)}
    metadata = {
        "diffeat": __version__,
        "model": str(args.model),
        "preset": extractor.config.preset,
        "layers": list(features),
        "source_layers": list(extractor.layers),
        "heads": heads,  # attention head count of each q/k/v/map source layer
        "images": [str(p) for p in args.images],
        "image_size": list(processed_size(extractor, args.images[0])),
        "prompt": args.prompt,
        "timestep": args.timestep,
        "latent": args.latent,
        "faithful": args.faithful,
        "dtype": args.dtype,
        "seed": args.seed,
    }
    save_features(args.output, features, metadata)
    for name, value in features.items():
        print(f"{name}: {tuple(value.shape)}")
    print(f"wrote {len(features)} features of {len(args.images)} images to {args.output}")


def command_probe(args: argparse.Namespace) -> None:
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    extractor = load_extractor(args)
    generator = extractor.generator()
    parts = run_batches(
        extractor,
        args.images,
        args,
        lambda images: (
            len(images),
            probe_all(extractor, images, args.prompt, generator, probes=probes),
        ),
    )
    total = sum(n for n, _ in parts)
    results = {  # mean over images: batches weighted by their size
        name: {p: sum(n * part[name][p] for n, part in parts) / total for p in probes}
        for name in parts[0][1]
    }
    width = max(len(n) for n in results)
    print(f"{'activation':<{width}}  " + "  ".join(f"{p:>11}" for p in probes))
    for name, values in results.items():
        print(f"{name:<{width}}  " + "  ".join(f"{values[p]:>11.4f}" for p in probes))
    if args.output is not None:
        atomic_write_bytes(args.output, json.dumps(results, indent=1).encode())
        print(f"wrote {args.output}")


def command_pca(args: argparse.Namespace) -> None:
    if args.features is not None:
        if args.images or args.model:
            raise ValueError("--features: pass either a features file or images with --model")
        features, meta = load_features(args.features)
        stems = [Path(p).stem for p in meta.get("images", [])]
        size = parse_size(args.size) or tuple(meta.get("image_size") or ()) or None
    else:
        if not args.images or not args.model:
            raise ValueError("pca: pass images and --model, or --features FILE")
        extractor = load_extractor(args)
        generator = extractor.generator()
        parts = run_batches(
            extractor, args.images, args, lambda images: extractor(images, args.prompt, generator)
        )
        features = stack_batches(parts, args.images)
        stems = [p.stem for p in args.images]
        size = parse_size(args.size) or processed_size(extractor, args.images[0])
    count = 0
    for name, feature in features.items():
        if len(stems) != feature.shape[0]:
            stems = [f"image{i}" for i in range(feature.shape[0])]
        paths = [args.output / f"{stem}__{name}.png" for stem in stems]
        save_pca_pngs(feature, paths, size)
        count += len(paths)
    print(f"wrote {count} PNGs to {args.output}")


def command_tiny_model(args: argparse.Namespace) -> None:
    save_tiny_model(str(args.directory), args.kind, args.seed)
    print(f"wrote a tiny random {args.kind} model to {args.directory}")


COMMANDS = {
    "layers": command_layers,
    "extract": command_extract,
    "probe": command_probe,
    "pca": command_pca,
    "tiny-model": command_tiny_model,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffeat`` console script; returns the exit status.

    Args:
        argv: arguments without the program name (None = ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, OSError, MissingActivationsError) as error:
        print(f"diffeat {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
