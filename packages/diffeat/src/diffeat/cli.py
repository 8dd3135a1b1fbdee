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
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from tqdm import tqdm

from common_kernels.cli import (
    Parser,
    UsageError,
    WorkError,
    check_device,
    check_writable,
    command_prog,
    one_line,
    run_main,
)
from common_kernels.files import (
    ImageReadError,
    check_output_folder_name,
    parse_size,
    write_json,
)
from diffeat import __version__
from diffeat.adapters import check_adapters
from diffeat.aggregate import RESIZE_MODES, aggregate
from diffeat.capture import MissingActivationsError
from diffeat.catalogue import LayerInfo, check_names
from diffeat.configs import DIT_CONFIGS, KINDS, UNET_CONFIGS, save_tiny_model, unet_config
from diffeat.dit import DIT_TOKENS
from diffeat.extractor import DTYPES, LATENT_MODES, TEXT_TOKENS, VAE_SPEC, FeatureExtractor
from diffeat.io import (
    feature_shapes,
    load_features,
    load_image,
    save_features,
)
from diffeat.listing import list_layers
from diffeat.presets import (
    ALL,
    PRESETS,
    default_preset,
    family_of,
    get_preset,
    layer_selection,
    selection_names,
)
from diffeat.probes import PROBES, probe_all
from diffeat.schedule import plan_noise
from diffeat.shapes import control_layer_infos, layer_infos
from diffeat.viz import save_pca_pngs

SEED_MAX = 2**64 - 1  # the range of torch.Generator.manual_seed: [0, 2**64 - 1]
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")  # org/name
MODEL_FILES = (  # what an extraction reads from a model folder besides the weights
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer",
)
SDXL_FILES = ("text_encoder_2/config.json", "tokenizer_2")  # text-time (SDXL-style) U-Nets
LAYERS_VAE_SCALE = 8  # `diffeat layers` computes shapes for the SD VAEs (x8)
MAP_KINDS = ("self-map", "cross-map")  # materialised only when requested
VAE_MAPS = 3  # full-resolution fp32 maps of the VAE encoder's first width alive at once
PROBE_BYTES = 64  # per feature value: float64 FFTs of the 2x zero-padded maps
PCA_BYTES = 16  # per feature value: the float64 copies the PCA makes
PNG_BYTES = 17  # per RGB value: the float64 upsampled image, its scaled copy, the uint8 PNG


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
        help="diffusion timestep in [0, num_train_timesteps - 1] (default 50)",
    )
    parser.add_argument("--prompt", default="", help="text prompt for every image")
    parser.add_argument(
        "--image-size",
        type=size_option,
        default=None,
        metavar="S|HxW",
        help="resize images to S or HxW, height first (default: the preset's resolution with "
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
        "--seed", type=int, default=0, help="seed of the latent sample and noise, in [0, 2**64-1]"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per U-Net pass (>= 1)")
    add = parser.add_argument
    add("--lora", action="append", default=[], metavar="PATH", help="LoRA file/folder/hub id")
    add("--lora-scale", type=float, default=1.0, help="weight of every --lora (default 1)")
    add("--fuse-lora", action="store_true", help="merge the LoRAs into the weights")
    add("--controlnet", default=None, metavar="PATH", help="ControlNet folder or hub id")
    add("--control-image", type=Path, default=None, help="its conditioning image (all images)")
    add("--control-scale", type=float, default=1.0, help="its conditioning_scale (default 1)")
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
        help="S or HxW (height x width), multiples of 8 (default: native size)",
    )
    layers.add_argument("--text-tokens", type=int, default=None, help="prompt length (77)")
    layers.add_argument("--contains", default=None, help="show names containing this only")

    extract = commands.add_parser("extract", help="extract features to a safetensors file")
    extract.add_argument("images", nargs="+", type=Path)
    extract.add_argument("-o", "--output", type=Path, required=True, help=".safetensors file")
    extract.add_argument(
        "--resize",
        type=size_option,
        default=None,
        metavar="S|HxW",
        help="resize every feature to S or HxW (height x width)",
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
        help="PNG size S or HxW, height first (default: the image size)",
    )
    add_model_options(pca, required=False)

    tiny = commands.add_parser("tiny-model", help="write a tiny random SD/SDXL model folder")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--kind", choices=KINDS, required=True)
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser


def check_int_range(value: int, flag: str, low: int, high: int | None = None) -> None:
    """Fail unless ``low <= value`` (and ``value <= high``), naming ``flag`` and the range.

    Args:
        value: the option's value.
        flag: the option, named in the message.
        low: the smallest accepted value.
        high: the largest accepted value (None: no bound).
    """
    if value < low or (high is not None and value > high):
        accepted = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise UsageError(f"{flag} must be {accepted}, got {value}")


def check_file_output(path: Path, flag: str, suffixes: tuple[str, ...]) -> None:
    """Fail unless ``path`` ends with one of ``suffixes``, is not a folder and can be written.

    Args:
        path: the output file.
        flag: the option that gave it.
        suffixes: the accepted suffixes (lower case, with the dot).
    """
    if path.suffix.lower() not in suffixes:
        found = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise UsageError(f"{flag} {path}: {found}; accepted: {', '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder, not a file")
    check_writable(path.parent, flag, path, "its folder")


def check_folder_output(folder: Path, flag: str) -> None:
    """Fail unless ``folder`` is a folder or can be created, and can be written to."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder")
    check_writable(folder, flag, folder, "it")


def check_image_file(path: Path) -> tuple[int, int]:
    """(H, W) of a readable, complete image file (decoded, then dropped)."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an image file (give the images, e.g. DIR/*.png)")
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    try:
        width, height = load_image(path).size
    except ImageReadError as error:
        raise UsageError(f"{path} is not a readable image ({error.reason})") from None
    return height, width


def check_model_source(model: str, needs: Sequence[str]) -> None:
    """``--model``: a diffusers folder holding ``needs``, or a hub id (checked when read).

    Args:
        model: the option's value.
        needs: files and folders the folder must hold (relative paths).
    """
    path = Path(model)
    if path.is_dir():
        for need in needs:
            if not (path / need).exists():
                raise UsageError(
                    f"--model {model}: {path / need} is missing; expected a diffusers SD/SDXL "
                    "model folder (`diffeat tiny-model DIR` writes one)"
                )
    elif path.exists():
        raise UsageError(
            f"--model {model} is a file; expected a diffusers model folder or a hub id (org/name)"
        )
    elif not HUB_ID.fullmatch(model):
        raise UsageError(
            f"--model {model}: the folder does not exist (and it is not a hub id of the form "
            "org/name)"
        )


def read_config(model: str, loader: Any, subfolder: str) -> dict[str, Any]:
    """One config file of ``--model`` (a hub id's is downloaded: a failure there exits 1).

    Args:
        model: a folder checked by :func:`check_model_source`, or a hub id.
        loader: the diffusers class whose ``load_config`` reads it.
        subfolder: ``unet``, ``vae`` or ``scheduler``.
    """
    try:
        return dict(loader.load_config(model, subfolder=subfolder))
    except (OSError, ValueError) as error:
        if Path(model).is_dir():
            raise UsageError(f"--model {model}: {one_line(error)}") from None
        raise WorkError(
            f"cannot read {subfolder}/ of --model {model} (a hub id; no local folder of that "
            f"name): {one_line(error)}"
        ) from None


@dataclass(frozen=True)
class ModelConfigs:
    """What the checks read from a model: its config files, no weights.

    Args:
        unet: the U-Net config.
        vae: the VAE config.
        scheduler: the scheduler, built from its config.
    """

    unet: dict[str, Any]
    vae: dict[str, Any]
    scheduler: Any

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (8 for the SD VAEs)."""
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor x 2 per U-Net down block but
        the last (each of those halves)."""
        return self.vae_scale * 2 ** (len(self.unet["down_block_types"]) - 1)


def read_model_configs(model: str) -> ModelConfigs:
    """The U-Net, VAE and scheduler configs of ``--model`` (no weights are read)."""
    import diffusers

    unet = read_config(model, diffusers.UNet2DConditionModel, "unet")
    vae = read_config(model, diffusers.AutoencoderKL, "vae")
    scheduler = read_config(model, diffusers.DDPMScheduler, "scheduler")
    name = str(scheduler.get("_class_name"))
    scheduler_cls = getattr(diffusers, name, None)
    if not isinstance(scheduler_cls, type) or not hasattr(scheduler_cls, "from_config"):
        raise UsageError(f"--model {model}: scheduler class {name!r} is not a diffusers scheduler")
    return ModelConfigs(unet, vae, scheduler_cls.from_config(scheduler))


def check_timestep(timestep: int, faithful: bool, scheduler: Any) -> None:
    """``--timestep`` against the model's scheduler (with ``--faithful``: its timestep list).

    Args:
        timestep: the option's value.
        faithful: ``--faithful`` (the official timestep selection).
        scheduler: the model's scheduler, built from its config.
    """
    try:
        plan_noise(scheduler, timestep, faithful)
    except ValueError as error:
        raise UsageError(f"--timestep: {str(error).removeprefix('timestep: ')}") from None


def selection_flag(args: argparse.Namespace) -> str:
    """The option the activation selection came from (for messages)."""
    return "--preset" if args.preset else "--all" if args.all else "--layers"


def selected_layers(args: argparse.Namespace) -> list[str] | str | None:
    """``--layers``/``--all`` as ``from_pretrained`` takes them (None: not given)."""
    if args.all:
        return ALL
    if args.layers is None:
        return None
    names = [n.strip() for n in args.layers.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--layers {args.layers!r}: no names given")
    if len(names) == 1 and names[0] in selection_names():
        return names[0]  # "all" or a preset name
    return names


def check_selection(
    args: argparse.Namespace, unet: dict[str, Any]
) -> tuple[list[str] | str | None, str | None]:
    """``--preset``/``--layers``/``--all`` -> (layers for ``from_pretrained``, the preset whose
    resolution is the default image size); a preset must fit the U-Net's family.

    Args:
        args: the parsed options.
        unet: the model's U-Net config.
    """
    layers = selected_layers(args)
    preset = args.preset or (layers if isinstance(layers, str) and layers in PRESETS else None)
    family = family_of(unet)
    if preset is not None and family is not None and get_preset(preset).family != family:
        fitting = ", ".join(sorted(n for n, p in PRESETS.items() if p.family == family))
        raise UsageError(
            f"{selection_flag(args)} {preset}: its names are those of "
            f"{get_preset(preset).family} U-Nets, but --model {args.model} is {family}-shaped "
            f"(its presets: {fitting})"
        )
    if layers is None and preset is None and family is None:
        raise UsageError(
            f"--model {args.model}: this U-Net is neither SD 1.x/2.x- nor SDXL-shaped, so no "
            "paper preset applies; pass --layers NAMES or --all"
        )
    return layers, preset


def requested_names(
    args: argparse.Namespace, layers: list[str] | str | None, unet: dict[str, Any]
) -> tuple[str, ...]:
    """The names a run returns (``("all",)`` for everything); none given: the paper's preset.

    Args:
        args: the parsed options.
        layers: from :func:`selected_layers`.
        unet: the model's U-Net config.
    """
    if layers is not None:
        return layer_selection(layers, selection_flag(args))
    return get_preset(args.preset or default_preset(unet)).layers


def check_layer_names(
    args: argparse.Namespace, names: tuple[str, ...], infos: Sequence[LayerInfo]
) -> tuple[str, ...]:
    """``names`` with ``all`` expanded, checked against ``vae-out`` and the U-Net catalogue.

    Args:
        args: the parsed options (for the flag named in messages).
        names: from :func:`requested_names`.
        infos: from :func:`model_infos`.
    """
    specs = [info.spec for info in infos]
    if names == (ALL,):
        return tuple(spec.name for spec in specs)
    try:
        check_names(names, specs)
    except ValueError as error:
        message = str(error).removeprefix("layers: ")
        if not {spec.name for spec in specs}.issuperset(names):
            message += f"; whole selections: {', '.join(selection_names())}"
        raise UsageError(f"{selection_flag(args)}: {message}") from None
    return names


def feed_size(args: argparse.Namespace, preset: str | None) -> tuple[tuple[int, int] | None, str]:
    """(H, W) the images are resized to (None: their own size) and the option that set it."""
    if args.image_size is not None:
        height, width = args.image_size
        return args.image_size, f"--image-size {height}x{width}"
    if preset is not None:
        side = get_preset(preset).resolution
        return (side, side), f"{selection_flag(args)} {preset} ({side}x{side})"
    return None, ""


def fed_size(
    paths: Sequence[Path],
    sizes: Sequence[tuple[int, int]],
    size: tuple[int, int] | None,
    source: str,
    group: int,
    why: str,
) -> tuple[tuple[int, int], str]:
    """The largest (H, W) fed to the model and what set it.

    Args:
        paths: the image files.
        sizes: their (H, W).
        size: the size the images are resized to (None: their own).
        source: the option that set ``size``.
        group: consecutive images that must share their own size (a batch, or all of them).
        why: why they must (for the message).
    """
    if size is not None:
        return size, source
    for start in range(0, len(paths), group):
        first = sizes[start]
        for index in range(start + 1, min(start + group, len(paths))):
            if sizes[index] != first:
                other = sizes[index]
                raise UsageError(
                    f"{paths[start]} is {first[0]}x{first[1]} but {paths[index]} is "
                    f"{other[0]}x{other[1]} (HxW); {why}: pass --image-size S|HxW to resize them"
                )
    height, width = max(sizes, key=lambda hw: hw[0] * hw[1])
    return (height, width), f"images of {height}x{width} (their own size)"


def check_multiples(
    paths: Sequence[Path],
    sizes: Sequence[tuple[int, int]],
    configs: ModelConfigs,
    size: tuple[int, int] | None,
    source: str,
) -> None:
    """Fail unless the fed sizes are multiples of the model's ``size_multiple``.

    Args:
        paths: the image files.
        sizes: their (H, W).
        configs: the model's configs.
        size: the size the images are resized to (None: their own).
        source: the option that set ``size``.
    """
    multiple = configs.size_multiple
    factors = f"VAE x{configs.vae_scale}, U-Net x{multiple // configs.vae_scale}"
    if size is not None:
        if size[0] % multiple or size[1] % multiple:
            raise UsageError(
                f"{source}: height and width must be multiples of {multiple} for this model "
                f"({factors})"
            )
        return
    for path, (height, width) in zip(paths, sizes, strict=True):
        if height % multiple or width % multiple:
            raise UsageError(
                f"{path} is {height}x{width} (HxW), not a multiple of {multiple} for this model "
                f"({factors}); pass --image-size S|HxW to resize"
            )


def model_infos(
    configs: ModelConfigs, size: tuple[int, int], faithful: bool = False, control=None
) -> list[LayerInfo]:
    """``vae-out`` (with ``faithful``: the decoded image), the U-Net catalogue and that of the
    ``control`` config's ControlNet with shapes for ``size`` images, rounded up to the model's
    size multiple (a shape-only pass on the meta device: no weights, no memory)."""
    multiple, scale = configs.size_multiple, configs.vae_scale
    height, width = (-(-side // multiple) * multiple for side in size)
    latent = (configs.vae["latent_channels"], height // scale, width // scale)
    if faithful:
        latent = (configs.vae.get("out_channels", 3), height, width)
    unet = layer_infos(configs.unet, (height, width), TEXT_TOKENS, scale)
    if control is not None:
        unet += control_layer_infos(control, (height, width), TEXT_TOKENS, scale)
    return [LayerInfo(VAE_SPEC, latent), *unet]


def check_adapter_options(args: argparse.Namespace, configs: ModelConfigs) -> dict | None:
    """``--lora``/``--controlnet``/``--control-image`` checked against the model by the API's
    :func:`diffeat.adapters.check_adapters` (no weights of the model read); returns the
    ControlNet's config (None without one)."""
    for flag, value in (("--lora-scale", args.lora_scale), ("--control-scale", args.control_scale)):
        if not math.isfinite(value):
            raise UsageError(f"{flag}: must be a finite number; got {value}")
    needs = {"--fuse-lora": (args.fuse_lora, args.lora, "--lora PATH")}
    needs["--control-image"] = (args.control_image, args.controlnet, "--controlnet PATH")
    needs["--controlnet"] = (args.controlnet, args.control_image, "--control-image PATH")
    for flag, (given, other, what) in needs.items():
        if given and not other:
            raise UsageError(f"{flag}: needs {what}")
    if args.control_image is not None:
        check_image_file(args.control_image)
    sources = [("--lora", path) for path in args.lora] + [("--controlnet", args.controlnet)]
    for flag, path in sources:
        if path is not None and not Path(path).exists() and not HUB_ID.fullmatch(path):
            raise UsageError(f"{flag} {path}: does not exist (and is not a hub id org/name)")
    try:
        check_adapters(args.model, configs.unet, args.lora, args.controlnet)
    except ValueError as error:
        raise UsageError(f"--{one_line(error)}") from None
    except OSError as error:
        local = all(Path(path).exists() for _, path in sources if path is not None)
        error_type = UsageError if local else WorkError
        raise error_type(f"--lora/--controlnet: {one_line(error)}") from None
    if args.controlnet is None:
        return None
    import diffusers

    return dict(diffusers.ControlNetModel.load_config(args.controlnet))


@dataclass(frozen=True)
class Extraction:
    """The checked inputs of an extraction (``extract``, ``probe``, ``pca`` with images).

    Args:
        device: where the models run.
        layers: ``--layers``/``--all`` as ``from_pretrained`` takes them (None: not given).
        image_size: (H, W) the images are resized to (None: their own size).
        names: the activation names returned (``all`` expanded).
        infos: ``vae-out`` and the U-Net catalogue with shapes at ``fed``.
        fed: the largest (H, W) fed to the model.
        source: what set ``fed`` (named in memory errors).
        vae_width: channels of the VAE encoder's first block.
    """

    device: torch.device
    layers: list[str] | str | None
    image_size: tuple[int, int] | None
    names: tuple[str, ...]
    infos: list[LayerInfo]
    fed: tuple[int, int]
    source: str
    vae_width: int

    def shapes(self) -> list[tuple[int, int, int]]:
        """(C, h, w) of every returned activation, in order."""
        by_name = {info.name: info.shape for info in self.infos}
        return [by_name[name] for name in self.names]


def check_extraction(
    args: argparse.Namespace,
    group: int,
    why: str,
    memory: Callable[[argparse.Namespace, Extraction], list[MemoryPart]],
) -> Extraction:
    """Every input of an extraction checked, reading only the model's config files.

    The memory estimate comes before the size-multiple check: a huge size is reported as such.

    Args:
        args: the parsed options.
        group: consecutive images that must share their own size (see :func:`fed_size`).
        why: why they must (for the message).
        memory: the command's memory estimate of a plan.
    """
    check_int_range(args.batch_size, "--batch-size", 1)
    check_int_range(args.seed, "--seed", 0, SEED_MAX)
    device = check_device(args.device)
    sizes = [check_image_file(path) for path in args.images]
    check_model_source(args.model, MODEL_FILES)
    configs = read_model_configs(args.model)
    if configs.unet.get("addition_embed_type") == "text_time":
        check_model_source(args.model, SDXL_FILES)
    check_timestep(args.timestep, args.faithful, configs.scheduler)
    layers, preset = check_selection(args, configs.unet)
    size, source = feed_size(args, preset)
    fed, fed_source = fed_size(args.images, sizes, size, source, group, why)
    control = check_adapter_options(args, configs)
    infos = model_infos(configs, fed, args.faithful, control)
    names = check_layer_names(args, requested_names(args, layers, configs.unet), infos)
    width = configs.vae["block_out_channels"][0]
    plan = Extraction(device, layers, size, names, infos, fed, fed_source, width)
    check_memory(memory(args, plan), device, args.allow_large)
    check_multiples(args.images, sizes, configs, size, source)
    return plan


@dataclass(frozen=True)
class MemoryPart:
    """One item of a run's memory estimate.

    Args:
        what: the options that set it (named in the error).
        nbytes: the estimated bytes.
        on_device: held in ``--device`` memory (else in host memory).
    """

    what: str
    nbytes: int
    on_device: bool


def pass_part(args: argparse.Namespace, plan: Extraction) -> MemoryPart:
    """One batch through the VAE encoder and the U-Net, every activation of the pass counted
    as alive at once (attention maps only when requested: only those are materialised), plus
    ``VAE_MAPS`` fp32 maps of the VAE encoder's first width at full resolution."""
    batch = min(args.batch_size, len(args.images))
    unet = sum(
        math.prod(info.shape)
        for info in plan.infos
        if info.spec.kind not in MAP_KINDS or info.name in plan.names
    )
    vae = VAE_MAPS * plan.vae_width * plan.fed[0] * plan.fed[1] * 4
    nbytes = batch * (unet * DTYPES[args.dtype].itemsize + vae)
    return MemoryPart(f"{plan.source} with --batch-size {args.batch_size}", nbytes, True)


def features_part(args: argparse.Namespace, plan: Extraction) -> MemoryPart:
    """The features of every image, kept in host memory until written."""
    count = len(args.images)
    values = sum(math.prod(shape) for shape in plan.shapes())
    nbytes = count * values * DTYPES[args.dtype].itemsize
    return MemoryPart(f"the features of {count} image(s) ({plan.source})", nbytes, False)


def resize_part(args: argparse.Namespace, plan: Extraction) -> MemoryPart:
    """``--resize``/``--concat``: the resized features of every image (and their concatenation)."""
    shapes = plan.shapes()
    height, width = args.resize or max((s[1:] for s in shapes), key=lambda hw: hw[0] * hw[1])
    channels = sum(shape[0] for shape in shapes)
    copies = 2 if args.concat else 1
    nbytes = len(args.images) * channels * height * width * DTYPES[args.dtype].itemsize * copies
    what = f"--resize {height}x{width}" if args.resize else f"--concat at {height}x{width}"
    return MemoryPart(what, nbytes, False)


def probe_part(args: argparse.Namespace, plan: Extraction) -> MemoryPart:
    """The features of one batch with and without noise, and the probes' float64 FFTs."""
    batch = min(args.batch_size, len(args.images))
    values = [math.prod(shape) for shape in plan.shapes()]
    nbytes = batch * (2 * sum(values) * DTYPES[args.dtype].itemsize + PROBE_BYTES * max(values))
    return MemoryPart(f"the probes of a batch ({plan.source})", nbytes, False)


def pca_parts(
    args: argparse.Namespace, count: int, values: Sequence[int], png: tuple[int, int]
) -> list[MemoryPart]:
    """The PCA of the largest activation and the PNGs of one activation (one at a time).

    Args:
        args: the parsed options (``--size`` names the PNG part).
        count: images.
        values: C * h * w of every activation.
        png: (H, W) of the PNGs.
    """
    what = f"--size {png[0]}x{png[1]}" if args.size else f"PNGs of {png[0]}x{png[1]}"
    return [
        MemoryPart(f"the PCA of {count} image(s)", count * max(values) * PCA_BYTES, False),
        MemoryPart(what, count * png[0] * png[1] * 3 * PNG_BYTES, False),
    ]


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024:
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} EiB"


def host_available_bytes() -> int | None:
    """The host's available memory: /proc/meminfo's MemAvailable, else psutil's, else None."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def available_bytes(pool: str) -> int | None:
    """Free memory of ``"host"`` or of a CUDA device such as ``"cuda:0"`` (None: unknown)."""
    if pool == "host":
        return host_available_bytes()
    return torch.cuda.mem_get_info(torch.device(pool))[0]


def check_memory(parts: Sequence[MemoryPart], device: torch.device, allow_large: bool) -> None:
    """Fail when an estimate exceeds the available memory, unless ``--allow-large``.

    Parts held on a CUDA ``--device`` count against its free memory; the rest (everything on
    cpu, and on mps: unified memory) against the host's available memory.

    Args:
        parts: the run's memory estimate.
        device: the checked ``--device``.
        allow_large: ``--allow-large`` (no check).
    """
    if allow_large:
        return
    pools: dict[str, list[MemoryPart]] = {}
    for part in parts:
        pool = str(device) if part.on_device and device.type == "cuda" else "host"
        pools.setdefault(pool, []).append(part)
    for pool, group in pools.items():
        total = sum(part.nbytes for part in group)
        available = available_bytes(pool)
        if available is not None and total > available:
            largest = max(group, key=lambda part: part.nbytes)
            raise UsageError(
                f"{largest.what}: needs an estimated {human_bytes(total)} ({total:,} bytes) of "
                f"{pool} memory, more than the {human_bytes(available)} available (lower it, "
                "or pass --allow-large to run anyway)"
            )


def extract_memory(args: argparse.Namespace, plan: Extraction) -> list[MemoryPart]:
    """``extract``: one batch's pass, the features of every image, their resizing."""
    memory = [pass_part(args, plan), features_part(args, plan)]
    if args.resize is not None or args.concat:
        memory.append(resize_part(args, plan))
    return memory


def probe_memory(args: argparse.Namespace, plan: Extraction) -> list[MemoryPart]:
    """``probe``: one batch's pass and its probes."""
    return [pass_part(args, plan), probe_part(args, plan)]


def pca_memory(args: argparse.Namespace, plan: Extraction) -> list[MemoryPart]:
    """``pca`` of images: one batch's pass, the features of every image, PCA and PNGs."""
    values = [math.prod(shape) for shape in plan.shapes()]
    pca = pca_parts(args, len(args.images), values, args.size or plan.fed)
    return [pass_part(args, plan), features_part(args, plan), *pca]


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
    """Fail when a PNG ``folder/<stem>__<name>.png`` would land on a folder.

    Args:
        folder: ``-o/--output``.
        stems: the image stems.
        names: the activation names.
    """
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


def check_pca_file(args: argparse.Namespace) -> tuple[dict[str, tuple[int, ...]], dict]:
    """``--features``: shapes and metadata of a features file (its tensors are not read)."""
    path = args.features
    if args.images or args.model:
        raise UsageError("--features: pass either a features file or images with --model")
    if path.is_dir():
        raise UsageError(f"--features {path} is a folder, not a file")
    if not path.exists():
        raise UsageError(f"--features {path} does not exist")
    try:
        shapes, meta = feature_shapes(path)
    except (OSError, ValueError, SafetensorError) as error:
        raise UsageError(
            f"--features {path} is not a features file of `diffeat extract` ({one_line(error)})"
        ) from None
    bad = [name for name, shape in shapes.items() if len(shape) != 4 or 0 in shape]
    if not shapes or bad:
        found = f"{bad[0]!r} is {shapes[bad[0]]}" if bad else "it holds none"
        raise UsageError(f"--features {path}: expected (N, C, h, w) feature tensors; {found}")
    return shapes, meta


def load_extractor(args: argparse.Namespace, plan: Extraction) -> FeatureExtractor:
    """The extractor of the checked options; a failure to load exits 1."""
    try:
        return FeatureExtractor.from_pretrained(
            args.model,
            layers=plan.layers,
            preset=args.preset,
            timestep=args.timestep,
            dtype=args.dtype,
            device=str(plan.device),
            latent=args.latent,
            faithful=args.faithful,
            early_exit=not args.no_early_exit,
            image_size=plan.image_size,
            seed=args.seed,
            output_device="cpu",
            lora=args.lora or None,
            lora_scale=args.lora_scale,
            fuse_lora=args.fuse_lora,
            controlnet=args.controlnet,
            control_scale=args.control_scale,
            control_image=None if args.control_image is None else load_image(args.control_image),
        )
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
    for batch in tqdm(batches, desc="batches", disable=len(batches) < 2):
        results.append(run([load_image(p) for p in batch]))
    return results


def stack_batches(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-batch features concatenated along the batch (the checks gave them one size)."""
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def command_layers(args: argparse.Namespace) -> None:
    """Print the catalogue with shapes, from a bundled config or a model's U-Net config."""
    if args.text_tokens is not None:
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
        check_model_source(args.model, needs)
        config = read_config(args.model, UNet2DConditionModel, "unet")
        tokens = args.text_tokens or prompt_length(args.model)
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
    plan = check_extraction(args, len(args.images), why, extract_memory)
    extractor = load_extractor(args, plan)
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
        "image_size": list(plan.fed),
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
    plan = check_extraction(args, args.batch_size, why, probe_memory)
    extractor = load_extractor(args, plan)
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
        shapes, meta = check_pca_file(args)
        count = next(iter(shapes.values()))[0]
        stems = png_stems([Path(p).stem for p in meta.get("images", [])], count)
        size = args.size or tuple(meta.get("image_size") or ()) or None
        png = size or max((s[2:] for s in shapes.values()), key=lambda hw: hw[0] * hw[1])
        memory = pca_parts(args, count, [math.prod(s[1:]) for s in shapes.values()], png)
        check_png_paths(args.output, stems, list(shapes))
        check_memory(memory, torch.device("cpu"), args.allow_large)
        return load_features(args.features)[0], stems, size
    if not args.images or not args.model:
        raise UsageError("pass images and --model, or --features FILE")
    check_distinct_stems(args.images, args.output)
    why = "one PCA covers all images: they need one size"
    plan = check_extraction(args, len(args.images), why, pca_memory)
    stems = [p.stem for p in args.images]
    check_png_paths(args.output, stems, plan.names)
    extractor = load_extractor(args, plan)
    generator = extractor.generator()
    parts = run_batches(
        args.images, args.batch_size, lambda images: extractor(images, args.prompt, generator)
    )
    return stack_batches(parts), stems, args.size or plan.fed


def command_pca(args: argparse.Namespace) -> None:
    """Write PCA-to-RGB PNGs of every activation, one per image."""
    check_folder_output(args.output, "-o/--output")
    try:
        check_output_folder_name(args.output, "-o/--output")
    except ValueError as error:
        raise UsageError(str(error)) from None
    features, stems, size = features_for_pca(args)
    count = 0
    for name, feature in features.items():
        paths = [args.output / f"{stem}__{name}.png" for stem in png_stems(stems, len(feature))]
        save_pca_pngs(feature, paths, size)
        count += len(paths)
    print(f"wrote {count} PNGs to {args.output}")


def command_tiny_model(args: argparse.Namespace) -> None:
    """Write a tiny random SD/SDXL-shaped model folder."""
    check_int_range(args.seed, "--seed", 0, SEED_MAX)
    check_folder_output(args.directory, "DIR")
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
