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
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
from common_kernels.files import check_output_folder_name, parse_size
from diffeat import __version__
from diffeat.aggregate import RESIZE_MODES
from diffeat.capture import MissingActivationsError
from diffeat.checks import (
    DTYPES,
    SEED_MAX,
    check_int_range,
)
from diffeat.commands import (
    CheckedInputs,
    Keep,
    check_distinct_stems,
    check_inputs,
    check_pca_file,
    check_png_paths,
    check_probes,
    extract_batches,
    mean_probes,
    pca_keep,
    probe_part,
    resize_parts,
    write_features,
    write_pca,
)
from diffeat.configs import DIT_CONFIGS, KINDS, UNET_CONFIGS, save_tiny_model
from diffeat.extractor import LATENT_MODES, FeatureExtractor, check_from_pretrained
from diffeat.inputs import check_image_file
from diffeat.io import load_features, load_image
from diffeat.listing import check_listing, list_layers
from diffeat.presets import ALL, PRESETS, selection_names
from diffeat.probes import PROBES


def size_option(text: str) -> tuple[int, int]:
    """``S`` or ``HxW`` (height x width) in pixels -> ``(H, W)`` (an argparse type: its errors
    name the flag); the rule of ``common_kernels.files.parse_size``, as in every package."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


DEFAULT = " (default: %(default)s)"
SIZE = {"type": size_option, "default": None, "metavar": "S|HxW"}
# the extraction options of ``extract``, ``probe`` and ``pca`` after --model and the selection
MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "--timestep": {"type": int, "default": 50, "help": "diffusion timestep in steps, in "
                   "[0, num_train_timesteps - 1] (SD: [0, 999])" + DEFAULT},
    "--prompt": {"default": "", "help": "text prompt for every image"},
    "--image-size": {**SIZE, "help": "resize images to S or HxW px, height first, multiples of "
                     "the model's factor (SD: 64) (default: the preset's resolution with "
                     "--preset, else the images' own size, which must be a multiple of the "
                     "model's factor)"},
    "--latent": {"choices": LATENT_MODES, "default": "sample"},
    "--faithful": {"action": "store_true", "help": "official-code quirks on"},
    "--no-early-exit": {"action": "store_true", "help": "always run the full U-Net"},
    "--dtype": {"choices": sorted(DTYPES), "default": "fp32"},
    "--device": {"default": None, "help": "torch device (default: cuda when available, else cpu)"},
    "--seed": {"type": int, "default": 0, "help": "seed of the latent sample and noise, in "
               "[0, 2**64 - 1]" + DEFAULT},
    "--batch-size": {"type": int, "default": 1, "help": "images per U-Net pass, >= 1" + DEFAULT},
    "--lora": {"action": "append", "default": [], "metavar": "PATH",
               "help": "LoRA file/folder/hub id"},
    "--lora-scale": {"type": float, "default": 1.0,
                     "help": "weight of every --lora, finite" + DEFAULT},
    "--fuse-lora": {"action": "store_true", "help": "merge the LoRAs into the weights"},
    "--controlnet": {"default": None, "metavar": "PATH", "help": "ControlNet folder or hub id"},
    "--control-image": {"type": Path, "default": None,
                        "help": "its conditioning image (all images)"},
    "--control-scale": {"type": float, "default": 1.0,
                        "help": "its conditioning_scale, finite" + DEFAULT},
    "--allow-large": {"action": "store_true",
                      "help": "run even when the memory estimate exceeds the available memory"},
}  # fmt: skip


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
    names = ", ".join(selection_names())
    selection.add_argument(
        "--layers", help=f"comma-separated activation names (vae-out and the U-Net catalogue), "
        f"or one of {names}"
    )  # fmt: skip
    selection.add_argument(
        "--all", action="store_true", help="the whole catalogue (= --layers all)"
    )
    for flag, options in MODEL_OPTIONS.items():
        parser.add_argument(flag, **options)


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
    native = "multiples of 8 (default: the native size, e.g. 512)"
    layers.add_argument("--image-size", **SIZE, help=f"S or HxW px (height x width), {native}")
    tokens = "prompt length in tokens, >= 1 (default: the tokenizer's, 77)"
    layers.add_argument("--text-tokens", type=int, default=None, help=tokens)
    layers.add_argument("--contains", default=None, help="show names containing this only")

    extract = commands.add_parser("extract", help="extract features to a safetensors file")
    extract.add_argument("images", nargs="+", type=Path)
    extract.add_argument("-o", "--output", type=Path, required=True, help=".safetensors file")
    resize = "resize every feature to S or HxW px (height x width), each >= 1 (default: no resize)"
    extract.add_argument("--resize", **SIZE, help=resize)
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
    png = "PNG size S or HxW px, height first, each >= 1 (default: the image size)"
    pca.add_argument("--size", **SIZE, help=png)
    add_model_options(pca, required=False)

    tiny = commands.add_parser("tiny-model", help="write a tiny random SD/SDXL model folder")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--kind", choices=KINDS, required=True)
    seed = "seed of the random weights, in [0, 2**64 - 1]" + DEFAULT
    tiny.add_argument("--seed", type=int, default=0, help=seed)
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
    "batch_size": "--batch-size",
    "allow_large": "--allow-large",
    "lora": "--lora",
    "lora_scale": "--lora-scale",
    "controlnet": "--controlnet",
    "control_scale": "--control-scale",
    "control_image": "--control-image",
    "resize": "--resize",
    "concat": "--concat",
    "size": "--size",
    "output": "-o/--output",
    "features": "--features",
    "probes": "--probes",
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
    keys = ("preset", "timestep", "dtype", "device", "latent", "faithful", "image_size", "seed")
    return {
        **{key: getattr(args, key) for key in keys},
        **{key: getattr(args, key) for key in ("lora_scale", "fuse_lora", "controlnet")},
        "layers": selected_layers(args),
        "early_exit": not args.no_early_exit,
        "output_device": "cpu",
        "lora": args.lora or None,
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


def check_extraction(args: argparse.Namespace, keep: Keep, **group) -> CheckedInputs:
    """Every input of an extraction checked by the API (``check_from_pretrained``, then
    ``check_inputs``), reading only config files; ``group``: which images share a size."""
    flags = {**FLAGS, "layers": "--all"} if args.all else FLAGS
    with usage_errors():
        check_int_range(args.batch_size, "--batch-size", 1)
        check_int_range(args.seed, "--seed", 0, SEED_MAX)
        check_device(args.device)
        check_adapter_flags(args)
        plan = check_from_pretrained(args.model, names=flags, **load_options(args))
        return check_inputs(
            plan,
            args.images,
            args.batch_size,
            keep=keep,
            allow_large=args.allow_large,
            names=flags,
            **group,
        )


def load_extractor(args: argparse.Namespace, checked: CheckedInputs) -> FeatureExtractor:
    """The extractor of the checked plan; a failure to load exits 1."""
    control = None if args.control_image is None else load_image(args.control_image)
    try:
        return FeatureExtractor.from_plan(checked.plan, control_image=control)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise WorkError(f"cannot load --model {args.model}: {one_line(error)}") from error


def command_layers(args: argparse.Namespace) -> None:
    """Print the catalogue with shapes, from a bundled config or a model's U-Net config."""
    flags = {**FLAGS, "text_tokens": "--text-tokens", "config": "--config"}
    with usage_errors():
        config, tokens, source = check_listing(
            args.config, args.model, args.image_size, args.text_tokens, flags
        )
    tokens = tokens or prompt_length(str(source))
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
    keep = resize_parts(args.resize, args.concat, FLAGS)
    checked = check_extraction(args, keep, group=len(args.images), why=why)
    extractor = load_extractor(args, checked)
    features = write_features(
        args.output,
        extractor,
        checked,
        args.prompt,
        args.resize,
        args.resize_mode,
        args.concat,
        model=args.model,
    )
    for name, value in features.items():
        print(f"{name}: {tuple(value.shape)}")
    print(f"wrote {len(features)} features of {len(args.images)} images to {args.output}")


def command_probe(args: argparse.Namespace) -> None:
    """Print (and write) the property probes of every selected activation."""
    with usage_errors():
        probes = check_probes(args.probes, "--probes")
    if args.output is not None:
        check_file_output(args.output, "-o/--output", (".json",))
    checked = check_extraction(args, probe_part)
    extractor = load_extractor(args, checked)
    results = mean_probes(extractor, checked, probes, args.prompt, args.output)
    width = max(len(n) for n in results)
    print(f"{'activation':<{width}}  " + "  ".join(f"{p:>11}" for p in probes))
    for name, values in results.items():
        print(f"{name:<{width}}  " + "  ".join(f"{values[p]:>11.4f}" for p in probes))
    if args.output is not None:
        print(f"wrote {args.output}")


def command_pca(args: argparse.Namespace) -> None:
    """Write PCA-to-RGB PNGs of every activation, one per image, from a features file or
    extracted; every input is checked before the file or any weights are read."""
    check_folder_writable(args.output, "-o/--output")
    with usage_errors():
        check_output_folder_name(args.output, "-o/--output")
    if args.features is not None:
        if args.images or args.model:
            raise UsageError("--features: pass either a features file or images with --model")
        with usage_errors():
            stems, size = check_pca_file(
                args.features, args.output, args.size, args.allow_large, FLAGS
            )
        features = load_features(args.features)[0]
    else:
        if not args.images or not args.model:
            raise UsageError("pass images and --model, or --features FILE")
        why = "one PCA covers all images: they need one size"
        with usage_errors():
            check_distinct_stems(args.images, args.output)
        keep = pca_keep(args.size, FLAGS)
        checked = check_extraction(args, keep, group=len(args.images), why=why)
        stems = [p.stem for p in args.images]
        with usage_errors():
            check_png_paths(args.output, stems, checked.plan.names, FLAGS)
        features = extract_batches(load_extractor(args, checked), checked, args.prompt)[0]
        size = args.size or checked.fed
    count = write_pca(features, args.output, stems, size)
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
