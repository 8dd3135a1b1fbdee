"""The ``diffeat`` command.

diffeat layers (--model PATH_OR_HUB_ID | --config sd15|sd21|sdxl|...) [--image-size S|HxW]
diffeat extract IMG|DIR... --model M [--preset P | --layers a,b | --all] -o feats.safetensors
diffeat probe IMG|DIR... --model M [--preset P | --layers a,b | --all] [-o probe.json]
diffeat pca IMG|DIR... --model M [--preset P | --layers a,b] -o OUTDIR   (or --features FILE)
diffeat generate-features --model M --prompt P --steps 0,10 [--layers a,b] -o feats.safetensors
diffeat tiny-model DIR --kind sd15|sdxl|pixart|pixart-alpha[-512]|flux|sd3|hunyuan|if
diffeat app [--model M] [--image-size S|HxW] [--sigma S] [--port 7860]  (Gradio page; diffeat[app])

--model: a diffusers SD/SDXL, PixArt, FLUX.1, SD3, HunyuanDiT or IF repository (model_index.json).
Sizes are S or HxW, height first (``64x96``: 64 px high). Folders give their images
(``--recursive``: subfolders' too), decoded before the model loads (``--keep-going`` skips a bad
one, exit 1); bad inputs are refused before any weights load (config files only): see main."""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common_kernels.runtime.batch import (
    BatchRun,
    CommandSession,
    Skipped,
    add_distributed_options,
    distributed_mode,
    resume_command,
)
from common_kernels.runtime.cli import (
    Parser,
    UsageError,
    add_verbose,
    check_file_writable,
    check_folder_writable,
    command_prog,
    one_line,
    run_main,
    size_type,
    usage_errors,
    version_line,
)
from common_kernels.runtime.files import check_output_folder_name
from common_kernels.runtime.quiet import quiet_libraries
from common_kernels.runtime.shards import Shard
from diffeat.aggregation import RESIZE_MODES
from diffeat.app import serve
from diffeat.capture import MissingActivationsError
from diffeat.checks import DTYPES
from diffeat.cli_shards import check_shards_command, extract_with_ray
from diffeat.command_checks import (
    check_images,
    check_plan,
    load_extractor,
    say,
    skipped_status,
)
from diffeat.commands import (
    check_pca_file,
    check_probes,
    extract_batches,
    mean_probes,
    pca_keep,
    plan_pca_outputs,
    probe_part,
    probe_table,
    resize_parts,
    write_features,
    write_pca,
)
from diffeat.configs import DIT_CONFIGS, TINY_MODEL_KINDS, UNET_CONFIGS, save_tiny_model
from diffeat.errors import SourceError
from diffeat.generate_features import GENERATE_FLAGS, add_generate_parser, command_generate
from diffeat.inversion import NOISINGS
from diffeat.io import load_features
from diffeat.listing import check_listing, list_layers, tokenizer_length
from diffeat.offload import OFFLOADS
from diffeat.plan import LATENT_MODES
from diffeat.presets import PRESETS, SD15_HUB_ID, selection_names
from diffeat.probes import PROBES
from diffeat.shards import shard_file, shard_images, write_refused_shard

DEFAULT = " (default: %(default)s)"
SIZE = {"type": size_type, "default": None, "metavar": "S|HxW"}
# the extraction options of ``extract``, ``probe`` and ``pca`` after --model and the selection
MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "--timestep": {"type": int, "default": 50, "help": "diffusion timestep in steps, in "
                   "[0, num_train_timesteps - 1] (SD: [0, 999])" + DEFAULT},
    "--prompt": {"default": "", "help": "text prompt for every image"},
    "--image-size": {**SIZE, "help": "resize images to S or HxW px, height first, multiples of "
                     "the model's factor (SD: 64) (default: the preset's resolution with "
                     "--preset, else the images' own size, which must be a multiple of the "
                     "model's factor)"},
    "--sigma": {"type": float, "default": None, "help": "FLUX/SD3: noise level in [0, 1], "
                "x_t = (1 - sigma) x_0 + sigma eps (default: timestep / 1000)"},
    "--guidance-scale": {"type": float, "default": None, "help": "FLUX.1-dev: its guidance "
                         "embedding's value, finite (default: 1.0, as the official code)"},
    "--noising": {"choices": NOISINGS, "default": "random", "help": "random noise at the timestep, "
                  "or DDIM inversion of the latent (U-Nets, PixArt)" + DEFAULT},
    "--inversion-steps": {"type": int, "default": None, "help": "DDIM steps of --noising "
                          "ddim-inversion, in [1, --timestep] (default: min(timestep, 50))"},
    "--latent": {"choices": LATENT_MODES, "default": "sample"},
    "--faithful": {"action": "store_true", "help": "official-code quirks on"},
    "--no-early-exit": {"action": "store_true", "help": "always run the whole network"},
    "--dtype": {"choices": sorted(DTYPES), "default": "fp32"},
    "--device": {"default": None, "help": "torch device (default: cuda when available, else cpu)"},
    "--seed": {"type": int, "default": 0, "help": "seed of the latent sample and noise, in "
               "[0, 2**64 - 1]" + DEFAULT},
    "--batch-size": {"type": int, "default": 1, "help": "images per U-Net pass, >= 1" + DEFAULT},
    "--lora": {"action": "append", "default": [], "metavar": "PATH", "help": "LoRA file/dir/hub"},
    "--lora-scale": {"type": float, "default": 1.0, "help": "--lora's weight, finite" + DEFAULT},
    "--fuse-lora": {"action": "store_true", "help": "merge the LoRAs into the weights"},
    "--controlnet": {"default": None, "metavar": "PATH", "help": "ControlNet folder or hub id"},
    "--control-image": {"type": Path, "default": None, "help": "its conditioning image (all)"},
    "--control-scale": {"type": float, "default": 1.0, "help": "its scale, finite" + DEFAULT},
    "--allow-large": {"action": "store_true", "help": "run even if the memory estimate is high"},
    "--offload": {"choices": OFFLOADS, "default": None, "help": "model: model CPU offload"},
}  # fmt: skip
IMAGES = {"nargs": "+", "type": Path, "metavar": "IMAGE|FOLDER",
          "help": "image files and folders (a folder gives its images in name order)"}  # fmt: skip
FLAG = {"action": "store_true"}
BATCH_OPTIONS: dict[str, dict[str, Any]] = {
    "--recursive": {**FLAG, "help": "walk subfolders too (default: left out, counted)"},
    "--keep-going": {**FLAG, "help": "skip an image that cannot be read (one line) and exit 1 "
                     "at the end with the list (default: stop before any model loads)"},
}  # fmt: skip
APP_OPTIONS: dict[str, dict[str, Any]] = {
    "--model": {"help": f"hub id or folder (default: {SD15_HUB_ID}; offline, the tiny model)"},
    "--image-size": {**SIZE, "help": "resize images to S or HxW px, height first, multiples of "
                     "the model's factor (SD: 64) (default: 512)"},
    "--host": {"default": "127.0.0.1", "help": "address to serve on" + DEFAULT},
    "--port": {"type": int, "default": 7860, "help": "TCP port, in [1, 65535]" + DEFAULT},
    "--share": {**FLAG, "help": "also open a public Gradio link"},
    **{f: MODEL_OPTIONS[f] for f in ("--timestep", "--sigma", "--dtype", "--device", "--offload")},
}  # fmt: skip
PCA_OPTIONS: dict[str, dict[str, Any]] = {
    "--skip-existing": {**FLAG, "help": "leave out images whose PNGs all exist (resumes an "
                        "interrupted run; the PCA then covers the images that remain)"},
    "--in-place": {**FLAG, "help": "allow -o to be an input folder (PNGs among its images)"},
}  # fmt: skip


def add_model_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The model, selection and extraction options of ``extract``, ``probe`` and ``pca`` on
    ``parser``; ``required``: ``--model`` is (``pca`` also takes ``--features`` instead)."""
    parser.add_argument("--model", required=required, help="a diffusers model: hub id or folder")
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--preset", choices=sorted(PRESETS), help="a paper selection")
    names = ", ".join(selection_names())
    selection.add_argument("--layers", help="comma-separated activation names (vae-out and the "
                           f"U-Net or DiT catalogue), or one of {names}")  # fmt: skip
    selection.add_argument("--all", **FLAG, help="the whole catalogue (= --layers all)")
    for flag, options in {**MODEL_OPTIONS, **BATCH_OPTIONS}.items():
        parser.add_argument(flag, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="diffeat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=version_line("diffeat", "diffeat"))
    commands = parser.add_subparsers(dest="command", required=True)

    layers = commands.add_parser("layers", help="print the activation catalogue with shapes")
    source = layers.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id or folder (only its network's config is read)")
    configs = sorted({**UNET_CONFIGS, **DIT_CONFIGS})
    source.add_argument("--config", choices=configs, help="a bundled config")
    native = "multiples of 8 (default: the native size, e.g. 512)"
    layers.add_argument("--image-size", **SIZE, help=f"S or HxW px (height x width), {native}")
    tokens = "prompt length in tokens, >= 1 (default: the tokenizer's, 77)"
    layers.add_argument("--text-tokens", type=int, default=None, help=tokens)
    layers.add_argument("--contains", default=None, help="show names containing this only")

    extract = commands.add_parser("extract", help="extract features to a safetensors file")
    extract.add_argument("images", **IMAGES)
    extract.add_argument("-o", "--output", type=Path, required=True, help=".safetensors file")
    resize = "resize every feature to S or HxW px (height x width), each >= 1 (default: no resize)"
    extract.add_argument("--resize", **SIZE, help=resize)
    extract.add_argument("--resize-mode", choices=RESIZE_MODES, default="bilinear")
    extract.add_argument("--concat", action="store_true", help="one concatenated 'features' key")
    add_distributed_options(extract, results="features file")
    add_model_options(extract)

    probe = commands.add_parser("probe", help="noise / granularity / locality per activation")
    probe.add_argument("images", **IMAGES)
    probe.add_argument("--probes", default=",".join(PROBES), help=f"subset of {','.join(PROBES)}")
    probe.add_argument("-o", "--output", type=Path, default=None, help="write results as JSON")
    add_model_options(probe)

    pca = commands.add_parser("pca", help="PCA-to-RGB PNGs of activations")
    pca.add_argument("images", **{**IMAGES, "nargs": "*"})
    pca.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    pca.add_argument("--features", type=Path, default=None, help="a file from `diffeat extract`")
    png = "PNG size S or HxW px, height first, each >= 1 (default: the image size)"
    pca.add_argument("--size", **SIZE, help=png)
    add_model_options(pca, required=False)
    for flag, options in PCA_OPTIONS.items():
        pca.add_argument(flag, **options)
    tiny = commands.add_parser("tiny-model", help="write a tiny random model folder (any kind)")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--kind", choices=TINY_MODEL_KINDS, required=True)
    seed = "seed of the random weights, in [0, 2**64 - 1]" + DEFAULT
    tiny.add_argument("--seed", type=int, default=0, help=seed)
    add_generate_parser(commands)
    app = commands.add_parser("app", help="a local Gradio page: PCA images of activations")
    for flag, options in APP_OPTIONS.items():
        app.add_argument(flag, **options)
    add_verbose(parser)
    return parser


# the API's argument -> this command's flag, so that the API's messages name the flags
FLAGS = {
    "model_id_or_dir": "--model", "model": "--model", "config": "--config", "port": "--port",
    "text_tokens": "--text-tokens", "directory": "DIR", "layers": "--layers", "preset": "--preset",
    "timestep": "--timestep", "dtype": "--dtype", "device": "--device", "seed": "--seed",
    "latent": "--latent", "image_size": "--image-size", "batch_size": "--batch-size",
    "allow_large": "--allow-large", "lora": "--lora", "lora_scale": "--lora-scale",
    "fuse_lora": "--fuse-lora", "faithful": "--faithful",
    "controlnet": "--controlnet", "control_scale": "--control-scale",
    "control_image": "--control-image", "resize": "--resize", "concat": "--concat",
    "size": "--size", "output": "-o/--output", "features": "--features", "probes": "--probes",
    "images": "IMAGE|FOLDER", "recursive": "--recursive", "in_place": "--in-place",
    "sigma": "--sigma", "guidance_scale": "--guidance-scale", "noising": "--noising",
    "inversion_steps": "--inversion-steps", "offload": "--offload", "shard": "--shard",
    "ray_workers": "--ray-workers", "ray_batch_size": "--ray-batch",
    "ray_gpus_per_worker": "--ray-gpus", **GENERATE_FLAGS,
}  # fmt: skip


def command_layers(args: argparse.Namespace) -> None:
    """Print the catalogue with shapes, from a bundled config or a model's U-Net config."""
    with usage_errors():
        config, tokens, source = check_listing(
            args.config, args.model, args.image_size, args.text_tokens
        )
    tokens = tokens or tokenizer_length(source)  # a failure to load it exits 1
    list_layers(config, args.image_size, tokens, contains=args.contains)


def command_extract(args: Namespace) -> int:
    """Extract features of the images to a safetensors file (or shard I/N of them to
    ``OUT-0000I-of-0000N.safetensors``, or on Ray; or check the shard files)."""
    with usage_errors():
        mode = distributed_mode(args)
        shard = Shard.parse(args.shard)
    if mode in ("check-shards", "ray"):
        return check_shards_command(args) if mode == "check-shards" else extract_with_ray(args)
    output = args.output if shard is None else shard_file(args.output, shard)
    check_file_writable(args.output, "-o/--output", (".safetensors",))
    if shard is not None and output.is_file():
        say(args, f"shard {shard}: {output} exists; nothing to do")
        return 0
    why = "the images of one features file need one size"
    keep = resize_parts(args.resize, args.concat)
    plan = check_plan(args)
    images = None
    if shard is not None:
        with usage_errors():
            images = shard_images(args.images, shard, recursive=args.recursive)
    checked = check_images(args, plan, keep, images=images, one_size=True, why=why)
    if checked.images:
        extractor = load_extractor(args, checked)
        features = write_features(
            output, extractor, checked, args.prompt, args.resize, args.resize_mode,
            args.concat, model=args.model, refused=None if shard is None else checked.skipped,
        )  # fmt: skip
        for name, value in features.items():
            print(f"{name}: {tuple(value.shape)}")
        print(f"wrote {len(features)} features of {len(checked.images)} images to {output}")
    elif shard is not None:
        write_refused_shard(output, checked.skipped)
        print(f"wrote {output}: no image of the shard could be read")
    return skipped_status(args, checked.skipped)


def command_probe(args: Namespace) -> int:
    """Print (and write) the property probes of every selected activation."""
    with usage_errors():
        probes = check_probes(args.probes)
    if args.output is not None:
        check_file_writable(args.output, "-o/--output", (".json",))
    checked = check_images(args, check_plan(args), probe_part)
    if checked.images:
        extractor = load_extractor(args, checked)
        results = mean_probes(extractor, checked, probes, args.prompt, args.output)
        print(probe_table(results, probes))
        if args.output is not None:
            print(f"wrote {args.output}")
    return skipped_status(args, checked.skipped)


def command_pca(args: Namespace) -> int:
    """PCA-to-RGB PNGs per activation and image (a features file or extracted), checked first."""
    check_folder_writable(args.output, "-o/--output")
    with usage_errors():
        check_output_folder_name(args.output, "-o/--output")
    if args.features is not None:
        if args.images or args.model:
            raise UsageError("--features: pass either a features file or images with --model")
        given = [f"--{k.replace('_', '-')}" for k in ("recursive", "keep_going", "in_place")
                 if getattr(args, k)]  # fmt: skip
        if given:
            raise UsageError(f"{given[0]}: applies to images, not to --features")
        with usage_errors():
            stems, size = check_pca_file(args.features, args.output, args.size, args.allow_large)
        return write_pngs(args, load_features(args.features)[0], stems, size)
    if not args.images or not args.model:
        raise UsageError("pass images and --model, or --features FILE")
    plan = check_plan(args)
    with usage_errors():
        outputs = plan_pca_outputs(
            args.images, args.output, plan.names, recursive=args.recursive,
            in_place=args.in_place, skip_existing=args.skip_existing,
        )  # fmt: skip
    if outputs.done:
        say(args, f"left out {len(outputs.done)} image(s) whose PNGs exist (--skip-existing)")
    if not outputs.pending.images:
        return write_pngs(args, {}, [], None)
    why = "one PCA covers all images: they need one size"
    keep = pca_keep(args.size)
    checked = check_images(args, plan, keep, outputs.pending, one_size=True, why=why)
    stems, features = outputs.stems_of(checked.images), {}
    args.session.run = BatchRun(len(stems), resume_command("diffeat pca", args.argv))
    if checked.images:
        features = extract_batches(load_extractor(args, checked), checked, args.prompt)[0]
    return write_pngs(args, features, stems, args.size or checked.fed, checked.skipped)


def write_pngs(args: Namespace, features, stems, size, skipped: Sequence[Skipped] = ()) -> int:
    """The PNGs of ``pca`` (image by image, counted for the interrupt line)."""
    run = args.session.run or BatchRun(len(stems), resume_command("diffeat pca", args.argv))
    args.session.run = run
    count = 0 if not stems else write_pca(
        features, args.output, stems, size, skip_existing=args.skip_existing,
        on_image=lambda index: run.done(),
    )  # fmt: skip
    print(f"wrote {count} PNGs to {args.output}")
    return skipped_status(args, skipped)


def command_app(args: Namespace) -> None:
    """Check the options, load the model, serve the PCA page (:mod:`diffeat.app`)."""
    with usage_errors():  # without gradio: needs gradio: pip install 'diffeat[app]'
        keys = ("model", "image_size", "timestep", "sigma", "dtype", "device", "offload")
        page = {k: getattr(args, k) for k in keys}
        serve(host=args.host, port=args.port, share=args.share, **page)


def command_tiny_model(args: argparse.Namespace) -> None:
    """Write a tiny random SD/SDXL-shaped model folder."""
    check_folder_writable(args.directory, "DIR")
    save_tiny_model(str(args.directory), args.kind, args.seed)
    print(f"wrote a tiny random {args.kind} model to {args.directory}")


COMMANDS = {"layers": command_layers, "extract": command_extract, "probe": command_probe,
            "pca": command_pca, "tiny-model": command_tiny_model, "app": command_app,
            "generate-features": command_generate}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffeat`` console script; returns the exit status.

    Bad inputs print ``diffeat COMMAND: error: ...`` (one line) and return 2, failures while
    working (and unreadable images skipped by ``--keep-going``) return 1, Ctrl-C prints
    ``diffeat COMMAND: interrupted`` (``pca``: after N of M images, and how to resume) and 130.

    Args:
        argv: arguments without the program name (None = ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(version_line("diffeat", "diffeat"))
        return 0
    session = CommandSession(argv[1:])

    def run() -> int | None:
        args = build_parser().parse_args(argv)
        args.argv, args.session = argv[1:], session
        with quiet_libraries(verbose=args.verbose):
            return COMMANDS[args.command](args)

    prog = command_prog("diffeat", argv, COMMANDS)
    return run_main(
        prog, run, work_errors=(MissingActivationsError,), describe=describe,
        interrupt_hint=session.interrupt_hint, flags=FLAGS,
    )  # fmt: skip


def describe(error: BaseException) -> str:
    """An error's one line, an API's failure to read a source naming the flag."""
    return one_line(error.for_flags(FLAGS) if isinstance(error, SourceError) else error)


if __name__ == "__main__":
    sys.exit(main())
