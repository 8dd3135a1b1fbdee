"""The ``diffeat`` command.

diffeat layers (--model PATH_OR_HUB_ID | --config sd15|sd21|sdxl|...) [--image-size S|HxW]
diffeat extract IMG... --model M [--preset P | --layers a,b | --all] -o feats.safetensors
diffeat probe IMG... --model M [--preset P | --layers a,b | --all] [-o probe.json]
diffeat pca IMG... --model M [--preset P | --layers a,b] -o OUTDIR   (or --features FILE)
diffeat tiny-model DIR --kind sd15|sdxl

Sizes are S (a square) or HxW, height first: ``--image-size 64x96`` is 64 px high, 96 px wide.

Errors: a bad input ends with one line ``diffeat COMMAND: error: ...`` naming the flag and exit
status 2, found before any weights are loaded (only the model's config files are read); a
failure while working (disk full, a model that cannot be loaded or downloaded) exits 1; Ctrl-C
exits 130 with ``diffeat COMMAND: interrupted``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from common_kernels.cli import (
    Parser,
    UsageError,
    WorkError,
    check_device,
    check_file_writable,
    check_folder_writable,
    command_prog,
    one_line,
    run_main,
)
from common_kernels.files import check_output_folder_name, parse_size, write_json
from common_kernels.progress import progress
from diffeat import __version__
from diffeat.aggregate import RESIZE_MODES, aggregate
from diffeat.capture import MissingActivationsError
from diffeat.catalogue import LayerInfo
from diffeat.checks import (
    DTYPES,
    SEED_MAX,
    TEXT_TOKENS,
    check_int_range,
    check_model_source,
    model_infos,
    read_config,
)
from diffeat.configs import DIT_CONFIGS, KINDS, UNET_CONFIGS, save_tiny_model, unet_config
from diffeat.dit import DIT_TOKENS
from diffeat.extractor import LATENT_MODES, FeatureExtractor, LoadPlan, check_from_pretrained
from diffeat.inputs import check_features_file, check_image_file, check_multiples, fed_size
from diffeat.io import load_features, load_image, save_features
from diffeat.listing import list_layers
from diffeat.memory import MemoryPart, check_memory, pass_bytes, pca_bytes, probe_bytes
from diffeat.presets import ALL, PRESETS, get_preset, selection_names
from diffeat.probes import PROBES, probe_all
from diffeat.viz import save_pca_pngs

LAYERS_VAE_SCALE = 8  # `diffeat layers` computes shapes for the SD VAEs (x8)


def size_option(text: str) -> tuple[int, int]:
    """``S`` or ``HxW`` (height x width) in pixels -> ``(H, W)`` (an argparse type: its errors
    name the flag); the rule of ``common_kernels.files.parse_size``, as in every package."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_model_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The model, selection and extraction options of ``extract``, ``probe`` and ``pca``.

    Args:
        parser: the command's parser.
        required: ``--model`` is required (``pca`` also takes ``--features`` instead).
    """
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
    parser.add_argument(
        "--timestep",
        type=int,
        default=50,
        help="diffusion timestep in steps, in [0, num_train_timesteps - 1] (SD: [0, 999]) "
        "(default: %(default)s)",
    )
    parser.add_argument("--prompt", default="", help="text prompt for every image")
    parser.add_argument(
        "--image-size",
        type=size_option,
        default=None,
        metavar="S|HxW",
        help="resize images to S or HxW px, height first, multiples of the model's factor (SD: 64) "
        "(default: the preset's resolution with "
        "--preset, else the images' own size, which must be a multiple of the model's factor)",
    )
    parser.add_argument("--latent", choices=LATENT_MODES, default="sample")
    parser.add_argument("--faithful", action="store_true", help="official-code quirks on")
    parser.add_argument("--no-early-exit", action="store_true", help="always run the full U-Net")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the latent sample and noise, in [0, 2**64 - 1] (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per U-Net pass, >= 1 (default: %(default)s)",
    )
    add = parser.add_argument
    add("--lora", action="append", default=[], metavar="PATH", help="LoRA file/folder/hub id")
    add(
        "--lora-scale",
        type=float,
        default=1.0,
        help="weight of every --lora, finite (default: %(default)s)",
    )
    add("--fuse-lora", action="store_true", help="merge the LoRAs into the weights")
    add("--controlnet", default=None, metavar="PATH", help="ControlNet folder or hub id")
    add("--control-image", type=Path, default=None, help="its conditioning image (all images)")
    add(
        "--control-scale",
        type=float,
        default=1.0,
        help="its conditioning_scale, finite (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="run even when the memory estimate exceeds the available memory",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="diffeat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"diffeat {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    layers = commands.add_parser("layers", help="print the activation catalogue with shapes")
    source = layers.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id or local folder (only its unet config is read)")
    source.add_argument(
        "--config", choices=sorted({**UNET_CONFIGS, **DIT_CONFIGS}), help="a bundled config"
    )
    layers.add_argument(
        "--image-size",
        type=size_option,
        default=None,
        metavar="S|HxW",
        help="S or HxW px (height x width), multiples of 8 (default: the native size, e.g. 512)",
    )
    layers.add_argument(
        "--text-tokens",
        type=int,
        default=None,
        help="prompt length in tokens, >= 1 (default: the tokenizer's, 77)",
    )
    layers.add_argument("--contains", default=None, help="show names containing this only")

    extract = commands.add_parser("extract", help="extract features to a safetensors file")
    extract.add_argument("images", nargs="+", type=Path)
    extract.add_argument("-o", "--output", type=Path, required=True, help=".safetensors file")
    extract.add_argument(
        "--resize",
        type=size_option,
        default=None,
        metavar="S|HxW",
        help="resize every feature to S or HxW px (height x width), each >= 1 (default: no resize)",
    )
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
    pca.add_argument(
        "--size",
        type=size_option,
        default=None,
        metavar="S|HxW",
        help="PNG size S or HxW px, height first, each >= 1 (default: the image size)",
    )
    add_model_options(pca, required=False)

    tiny = commands.add_parser("tiny-model", help="write a tiny random SD/SDXL model folder")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--kind", choices=KINDS, required=True)
    tiny.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random weights, in [0, 2**64 - 1] (default: %(default)s)",
    )
    return parser


# the API's argument -> this command's flag, so that the API's messages name the flags
FLAGS = {
    "model_id_or_dir": "--model",
    "layers": "--layers",
    "preset": "--preset",
    "timestep": "--timestep",
    "dtype": "--dtype",
    "device": "--device",
    "seed": "--seed",
    "latent": "--latent",
    "image_size": "--image-size",
    "allow_large": "--allow-large",
    "lora": "--lora",
    "lora_scale": "--lora-scale",
    "controlnet": "--controlnet",
    "control_scale": "--control-scale",
    "control_image": "--control-image",
}
BAD_INPUT = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """An API check's error about an input as a ``UsageError``: one line, exit status 2."""
    try:
        yield
    except BAD_INPUT as error:
        raise UsageError(one_line(error)) from None


def check_file_output(path: Path, flag: str, suffixes: tuple[str, ...]) -> None:
    """Fail unless ``path`` ends with one of ``suffixes``, is not a folder and can be written."""
    if path.suffix.lower() not in suffixes:
        found = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise UsageError(f"{flag} {path}: {found}; accepted: {', '.join(suffixes)}")
    check_file_writable(path, flag)


def selected_layers(args: argparse.Namespace) -> list[str] | str | None:
    """``--layers``/``--all`` as ``from_pretrained`` takes them (None: not given)."""
    if args.all:
        return ALL
    if args.layers is None:
        return None
    names = [n.strip() for n in args.layers.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--layers {args.layers!r}: no names given")
    return names[0] if len(names) == 1 and names[0] in selection_names() else names


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``from_pretrained`` keywords of the options (the control image not yet read)."""
    return {
        "layers": selected_layers(args),
        "preset": args.preset,
        "timestep": args.timestep,
        "dtype": args.dtype,
        "device": args.device,
        "latent": args.latent,
        "faithful": args.faithful,
        "early_exit": not args.no_early_exit,
        "image_size": args.image_size,
        "seed": args.seed,
        "output_device": "cpu",
        "lora": args.lora or None,
        "lora_scale": args.lora_scale,
        "fuse_lora": args.fuse_lora,
        "controlnet": args.controlnet,
        "control_scale": args.control_scale,
    }


def check_adapter_flags(args: argparse.Namespace) -> None:
    """Flags that need another one (``--fuse-lora`` needs ``--lora``, ...)."""
    needs = {"--fuse-lora": (args.fuse_lora, args.lora, "--lora PATH")}
    needs["--control-image"] = (args.control_image, args.controlnet, "--controlnet PATH")
    needs["--controlnet"] = (args.controlnet, args.control_image, "--control-image PATH")
    for flag, (given, other, what) in needs.items():
        if given and not other:
            raise UsageError(f"{flag}: needs {what}")
    if args.control_image is not None:
        with usage_errors():
            check_image_file(args.control_image)


@dataclass(frozen=True)
class Extraction:
    """The checked inputs of an extraction: the API's plan and the images' size.

    Args:
        plan: from :func:`diffeat.extractor.check_from_pretrained`.
        infos: ``vae-out`` and the catalogues with shapes at ``fed``.
        fed: the largest (H, W) fed to the model.
        source: what set ``fed`` (named in memory errors).
    """

    plan: LoadPlan
    infos: list[LayerInfo]
    fed: tuple[int, int]
    source: str

    def shapes(self) -> list[tuple[int, ...]]:
        """(C, h, w) of every returned activation, in order."""
        by_name = {info.name: info.shape for info in self.infos}
        return [by_name[name] for name in self.plan.names]


def check_extraction(args: argparse.Namespace, group: int, why: str) -> Extraction:
    """Every input of an extraction checked by the API, reading only config files.

    Args:
        args: the parsed options.
        group: consecutive images that must share their own size (a batch, or all).
        why: why they must (for the message).
    """
    flags = {**FLAGS, "layers": "--all"} if args.all else FLAGS
    with usage_errors():
        check_int_range(args.batch_size, "--batch-size", 1)
        check_int_range(args.seed, "--seed", 0, SEED_MAX)
        device = check_device(args.device)
        sizes = [check_image_file(path) for path in args.images]
        check_adapter_flags(args)
        plan = check_from_pretrained(args.model, names=flags, **load_options(args))
    configs = plan.configs
    multiple, scale = configs.size_multiple, configs.vae_scale
    factors = f"VAE x{scale}, U-Net x{multiple // scale}"
    size, source = args.image_size, ""
    if size is not None:
        source = f"--image-size {size[0]}x{size[1]}"
    if size is None and (args.preset or (args.layers or "").strip() in PRESETS):
        side = get_preset(plan.preset).resolution
        flag = "--preset" if args.preset else "--layers"
        size, source = (side, side), f"{flag} {plan.preset} ({side}x{side})"
    with usage_errors():
        fed, fed_source = (
            (size, source) if size else fed_size(args.images, sizes, group, why, "--image-size")
        )
    infos = model_infos(configs, fed, args.faithful, plan.control)
    extraction = Extraction(plan, infos, fed, fed_source)
    check_memory(memory_parts(args, extraction), device, args.allow_large, FLAGS)
    if size is not None and (size[0] % multiple or size[1] % multiple):
        raise UsageError(
            f"{source}: height and width must be multiples of {multiple} for this model ({factors})"
        )
    with usage_errors():
        if size is None:
            check_multiples(args.images, sizes, multiple, factors, "--image-size")
    return extraction


def memory_parts(args: argparse.Namespace, run: Extraction) -> list[MemoryPart]:
    """The command's memory estimate: one batch's pass, then what the command keeps."""
    itemsize = DTYPES[args.dtype].itemsize
    batch, count, shapes = min(args.batch_size, len(args.images)), len(args.images), run.shapes()
    vae_width = run.plan.configs.vae["block_out_channels"][0]
    nbytes = pass_bytes(run.infos, run.plan.names, batch, itemsize, run.fed, vae_width)
    parts = [MemoryPart(f"{run.source} with --batch-size {args.batch_size}", nbytes, True)]
    if args.command == "probe":
        what = f"the probes of a batch ({run.source})"
        return [*parts, MemoryPart(what, probe_bytes(shapes, batch, itemsize), False)]
    values = [math.prod(shape) for shape in shapes]
    what = f"the features of {count} image(s) ({run.source})"
    parts.append(MemoryPart(what, count * sum(values) * itemsize, False))
    if args.command == "pca":
        return parts + pca_parts(args, count, values, args.size or run.fed)
    if args.resize is not None or args.concat:
        height, width = args.resize or max((s[1:] for s in shapes), key=lambda hw: hw[0] * hw[1])
        channels = sum(shape[0] for shape in shapes)
        nbytes = count * channels * height * width * itemsize * (2 if args.concat else 1)
        what = f"--resize {height}x{width}" if args.resize else f"--concat at {height}x{width}"
        parts.append(MemoryPart(what, nbytes, False))
    return parts


def pca_parts(
    args: argparse.Namespace, count: int, values: Sequence[int], png: tuple[int, int]
) -> list[MemoryPart]:
    """The PCA of the largest activation and the PNGs of one activation (one at a time)."""
    pca, pngs = pca_bytes(count, values, png)
    what = f"--size {png[0]}x{png[1]}" if args.size else f"PNGs of {png[0]}x{png[1]}"
    return [MemoryPart(f"the PCA of {count} image(s)", pca, False), MemoryPart(what, pngs, False)]


def check_probes(text: str) -> list[str]:
    """``--probes``: a comma-separated, non-empty subset of ``PROBES``."""
    probes = [p.strip() for p in text.split(",") if p.strip()]
    if not probes or not set(probes) <= set(PROBES):
        raise UsageError(
            f"--probes {text!r}: choose a comma-separated subset of {','.join(PROBES)}"
        )
    return probes


def png_stems(stems: Sequence[str], count: int) -> list[str]:
    """PNG name stems of ``count`` images: ``stems``, or ``image{i}`` when they do not fit."""
    return list(stems) if len(stems) == count else [f"image{i}" for i in range(count)]


def check_png_paths(folder: Path, stems: Sequence[str], names: Sequence[str]) -> None:
    """Fail when a PNG ``folder/<stem>__<name>.png`` would land on a folder."""
    for stem in stems:
        for name in names:
            path = folder / f"{stem}__{name}.png"
            if path.is_dir():
                raise UsageError(f"-o/--output: {path} is a folder, in the way of a PNG")


def check_distinct_stems(paths: Sequence[Path], folder: Path) -> None:
    """Fail when two images share a file stem (their PNGs would overwrite each other)."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise UsageError(
                f"{seen[path.stem]} and {path} would both be written to "
                f"{folder / path.stem}__<activation>.png"
            )
        seen[path.stem] = path


def load_extractor(args: argparse.Namespace, run: Extraction) -> FeatureExtractor:
    """The extractor of the checked options; a failure to load exits 1."""
    control = None if args.control_image is None else load_image(args.control_image)
    options = {**load_options(args), "device": str(run.plan.device)}
    try:
        return FeatureExtractor.from_pretrained(args.model, control_image=control, **options)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise WorkError(f"cannot load --model {args.model}: {one_line(error)}") from error


def run_batches(
    paths: Sequence[Path], batch_size: int, run: Callable[[list[Image.Image]], Any]
) -> list:
    """Call ``run(images)`` on batches of loaded images (a progress bar from 2 batches on).

    Args:
        paths: the (checked) image files.
        batch_size: images per call.
        run: called with each batch of PIL images; its results are returned in order.
    """
    results = []
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    for batch in progress(batches, desc="diffeat", unit="batches", disable=len(batches) < 2):
        results.append(run([load_image(p) for p in batch]))
    return results


def stack_batches(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-batch features concatenated along the batch (the checks gave them one size)."""
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def command_layers(args: argparse.Namespace) -> None:
    """Print the catalogue with shapes, from a bundled config or a model's U-Net config."""
    if args.text_tokens is not None:
        with usage_errors():
            check_int_range(args.text_tokens, "--text-tokens", 1)
    if args.image_size is not None and (
        args.image_size[0] % LAYERS_VAE_SCALE or args.image_size[1] % LAYERS_VAE_SCALE
    ):
        height, width = args.image_size
        raise UsageError(
            f"--image-size {height}x{width}: height and width must be multiples of "
            f"{LAYERS_VAE_SCALE} (the SD VAE factor)"
        )
    if args.config is not None:
        default = DIT_TOKENS if args.config in DIT_CONFIGS else TEXT_TOKENS
        config, tokens = unet_config(args.config), args.text_tokens or default
        multiple = LAYERS_VAE_SCALE * config.get("patch_size", 1)  # a DiT: x patch size
        if args.image_size is not None and (
            args.image_size[0] % multiple or args.image_size[1] % multiple
        ):
            height, width = args.image_size
            raise UsageError(
                f"--image-size {height}x{width}: height and width must be multiples of "
                f"{multiple} for --config {args.config} (VAE x8, patch {multiple // 8})"
            )
    else:
        from diffusers import UNet2DConditionModel

        needs = ("unet/config.json",) if args.text_tokens else ("unet/config.json", "tokenizer")
        with usage_errors():
            source = check_model_source(args.model, needs, "--model")
            config = read_config(source, UNet2DConditionModel, "unet", "--model")
        tokens = args.text_tokens or prompt_length(str(source))
    list_layers(config, args.image_size, tokens, contains=args.contains)


def prompt_length(model: str) -> int:
    """The padded prompt length of ``--model``'s tokenizer; a failure to load it exits 1."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(model, subfolder="tokenizer").model_max_length
    except (OSError, ValueError) as error:
        raise WorkError(
            f"cannot load the tokenizer of --model {model}: {one_line(error)}"
        ) from None


def command_extract(args: argparse.Namespace) -> None:
    """Extract features of the images to a safetensors file."""
    check_file_output(args.output, "-o/--output", (".safetensors",))
    why = "the images of one features file need one size"
    run = check_extraction(args, len(args.images), why)
    extractor = load_extractor(args, run)
    generator = extractor.generator()
    parts = run_batches(
        args.images, args.batch_size, lambda images: extractor(images, args.prompt, generator)
    )
    heads = dict(parts[0].heads)
    features = stack_batches(parts)
    if args.resize is not None or args.concat:
        features = aggregate(features, args.resize, args.resize_mode, concat=False)
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
        "image_size": list(run.fed),
        "prompt": args.prompt,
        "timestep": args.timestep,
        "latent": args.latent,
        "faithful": args.faithful,
        "lora": [str(p) for p in args.lora],
        "controlnet": args.controlnet,
        "dtype": args.dtype,
        "seed": args.seed,
    }
    save_features(args.output, features, metadata)
    for name, value in features.items():
        print(f"{name}: {tuple(value.shape)}")
    print(f"wrote {len(features)} features of {len(args.images)} images to {args.output}")


def command_probe(args: argparse.Namespace) -> None:
    """Print (and write) the property probes of every selected activation."""
    probes = check_probes(args.probes)
    if args.output is not None:
        check_file_output(args.output, "-o/--output", (".json",))
    why = f"the images of one batch (--batch-size {args.batch_size}) need one size"
    extractor = load_extractor(args, check_extraction(args, args.batch_size, why))
    generator = extractor.generator()
    parts = run_batches(
        args.images,
        args.batch_size,
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
        write_json(args.output, results, indent=1, make_parents=True)
        print(f"wrote {args.output}")


def features_for_pca(
    args: argparse.Namespace,
) -> tuple[dict[str, torch.Tensor], list[str], tuple[int, int] | None]:
    """(features, image stems, PNG size) of ``pca``: read from ``--features`` or extracted;
    every input is checked before the file or any weights are read."""
    if args.features is not None:
        if args.images or args.model:
            raise UsageError("--features: pass either a features file or images with --model")
        with usage_errors():
            shapes, meta = check_features_file(args.features, "--features")
        count = next(iter(shapes.values()))[0]
        stems = png_stems([Path(p).stem for p in meta.get("images", [])], count)
        size = args.size or tuple(meta.get("image_size") or ()) or None
        png = size or max((s[2:] for s in shapes.values()), key=lambda hw: hw[0] * hw[1])
        memory = pca_parts(args, count, [math.prod(s[1:]) for s in shapes.values()], png)
        check_png_paths(args.output, stems, list(shapes))
        check_memory(memory, torch.device("cpu"), args.allow_large, FLAGS)
        return load_features(args.features)[0], stems, size
    if not args.images or not args.model:
        raise UsageError("pass images and --model, or --features FILE")
    check_distinct_stems(args.images, args.output)
    why = "one PCA covers all images: they need one size"
    run = check_extraction(args, len(args.images), why)
    stems = [p.stem for p in args.images]
    check_png_paths(args.output, stems, run.plan.names)
    extractor = load_extractor(args, run)
    generator = extractor.generator()
    parts = run_batches(
        args.images, args.batch_size, lambda images: extractor(images, args.prompt, generator)
    )
    return stack_batches(parts), stems, args.size or run.fed


def command_pca(args: argparse.Namespace) -> None:
    """Write PCA-to-RGB PNGs of every activation, one per image."""
    check_folder_writable(args.output, "-o/--output")
    with usage_errors():
        check_output_folder_name(args.output, "-o/--output")
    features, stems, size = features_for_pca(args)
    count = 0
    for name, feature in features.items():
        paths = [args.output / f"{stem}__{name}.png" for stem in png_stems(stems, len(feature))]
        save_pca_pngs(feature, paths, size)
        count += len(paths)
    print(f"wrote {count} PNGs to {args.output}")


def command_tiny_model(args: argparse.Namespace) -> None:
    """Write a tiny random SD/SDXL-shaped model folder."""
    with usage_errors():
        check_int_range(args.seed, "--seed", 0, SEED_MAX)
    check_folder_writable(args.directory, "DIR")
    if (args.directory / "model_index.json").exists():
        raise UsageError(f"DIR {args.directory} already holds a model (model_index.json)")
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

    Bad inputs print ``diffeat COMMAND: error: ...`` (one line) and return 2, failures while
    working return 1, Ctrl-C prints ``diffeat COMMAND: interrupted`` and returns 130.

    Args:
        argv: arguments without the program name (None = ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> None:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)

    prog = command_prog("diffeat", argv, COMMANDS)
    return run_main(prog, run, work_errors=(MissingActivationsError,))


if __name__ == "__main__":
    sys.exit(main())
