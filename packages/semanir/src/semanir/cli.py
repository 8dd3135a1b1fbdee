"""The ``semanir`` command: ``fit``/``validate`` (LightningCLI), ``restore`` and ``eval``.

semanir fit --config denoise_gray_tiny [--trainer.max_time 00:01:00:00]   # a shipped config
semanir restore IN... -o OUT [--task denoise --sigma 25] [--model PATH|HUB_ID] [--tile 512]
                [--k K] [--add-noise [SIGMA] --seed S] [--per-channel]
semanir eval --task denoise --sigma 25 --data DIR [--model PATH|HUB_ID] [--csv out.csv]
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser, Namespace
from PIL import Image
from torch import nn
from tqdm import tqdm

from common_kernels.cli import check_device, run_main
from common_kernels.files import atomic_write
from semanir.data.datasets import SyntheticDegradationDataset, index_generator
from semanir.data.degradations import (
    add_gaussian_noise,
    bicubic_resize,
    check_quality,
    check_scale,
    check_sigma,
)
from semanir.inference import load_model
from semanir.inference import restore as restore_batch
from semanir.io import (
    IMAGE_EXTENSIONS,
    convert_channels,
    is_image_file,
    list_images,
    read_image,
    write_image,
)
from semanir.metrics import psnr, ssim

USAGE = """usage: semanir {fit,validate,restore,eval} ...

commands:
  fit       train with Lightning:  semanir fit --config denoise_gray_tiny (shipped) or FILE.yaml
  validate  validate a checkpoint: semanir validate --config CONFIG --ckpt_path CKPT
  restore   restore image files or folders:  semanir restore IN... -o OUT
  eval      PSNR/SSIM on a folder of clean images with synthetic degradations:
            semanir eval --task denoise --sigma 25 --data DIR

run `semanir COMMAND --help` for the options of a command
"""
LIGHTNING_COMMANDS = ("fit", "validate")
USE_SIGMA = -1.0  # the value of a bare --add-noise: take the level from --sigma
TASKS = ("denoise", "jpeg", "sr")
GRAY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")  # Pillow modes


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``semanir`` console script; returns the exit status.

    Args:
        argv: command-line arguments without the program name (None = ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, options = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        run_lightning(with_bundled_configs(argv))
        return 0
    commands = {"restore": (restore_parser, restore), "eval": (eval_parser, evaluate)}
    if command not in commands:
        print(f"semanir: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    make_parser, run = commands[command]
    args = make_parser().parse_args(options)
    # a missing input file is a bad input (exit 2), not a failure while working
    return run_main(f"semanir {command}", lambda: run(args), usage_errors=(FileNotFoundError,))


def bundled_configs_dir() -> Path:
    """Folder of the training configs shipped in the package (``semanir/configs``)."""
    return Path(str(resources.files("semanir") / "configs"))


def with_bundled_configs(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config NAME`` that is not a file but names a shipped config
    (``denoise_gray_tiny_bundled`` or ``denoise_gray_tiny_bundled.yaml``) replaced by its path."""
    resolved = list(argv)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            resolved[i + 1] = _config_path(resolved[i + 1])
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + _config_path(arg.removeprefix("--config="))
    return resolved


def _config_path(value: str) -> str:
    if Path(value).exists() or "/" in value or "\\" in value:
        return value
    for name in (value, f"{value}.yaml"):
        if (bundled_configs_dir() / name).is_file():
            return str(bundled_configs_dir() / name)
    return value


def run_lightning(argv: list[str]) -> None:
    """``semanir fit|validate ...``: LightningCLI over RestorationModule + RestorationDataModule.

    Args:
        argv: the arguments starting with the subcommand.
    """
    # Imported here: Lightning takes seconds to import and restore/eval do not need it.
    from semanir.lightning_module import RestorationCLI

    RestorationCLI(args=argv)


def _add_model_options(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="save_pretrained folder or Hugging Face hub id (default: the bundled gray denoiser)",
    )
    parser.add_argument("--tile", type=int, default=None, help="tile size for large images")
    parser.add_argument("--tile-overlap", type=int, default=32, help="overlap between tiles")
    parser.add_argument("--k", type=int, default=None, help="neighbours per token at inference")
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="average over the 8 flips/rotations of the input (x8 self-ensemble, 8x slower)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")


def restore_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="semanir restore",
        description="Restore images and write the results (atomically) to OUT.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="output folder; or an image file name when restoring a single image",
    )
    parser.add_argument("--task", choices=TASKS, default="denoise", help="restoration task")
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="noise level (0-255) of the inputs; the level --add-noise uses when given no value",
    )
    _add_model_options(parser)
    parser.add_argument(
        "--add-noise",
        type=float,
        nargs="?",
        const=USE_SIGMA,
        default=None,
        metavar="SIGMA",
        help="treat inputs as clean: add Gaussian noise first (demo) and print PSNR before/after",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --add-noise")
    parser.add_argument(
        "--per-channel",
        action="store_true",
        help="with a gray model, restore a colour image's R, G and B channels one by one and "
        "write a colour result (default: restore its BT.601 luma, with a warning)",
    )
    parser.add_argument(
        "--save-noisy",
        action="store_true",
        help="with --add-noise, also write each noisy input as NAME_noisy.EXT next to its output",
    )
    return parser


def eval_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="semanir eval",
        description="Degrade clean images, restore them and print a PSNR/SSIM table.",
    )
    parser.add_argument("--task", choices=TASKS, default="denoise", help="restoration task")
    parser.add_argument("--data", nargs="+", required=True, help="clean image files/folders")
    parser.add_argument("--sigma", type=float, default=None, help="noise level for denoise")
    parser.add_argument("--quality", type=int, default=None, help="JPEG quality for jpeg")
    parser.add_argument("--scale", type=int, default=None, help="factor for sr (default: model's)")
    _add_model_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic degradations")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    return parser


def _load(args: Namespace, device: torch.device) -> nn.Module:
    """The model named by --model on --device, checked against --task."""
    model = load_model(args.model).to(device).eval()
    upscale = int(model.upscale)
    if (args.task == "sr") != (upscale > 1):
        raise ValueError(
            f"the model {'upscales x' + str(upscale) if upscale > 1 else 'keeps the image size'}, "
            f"which does not fit --task {args.task}"
        )
    return model


def _channels(model: nn.Module) -> str:
    return "gray" if model.in_channels == 1 else "rgb"


def _run_model(model: nn.Module, image: torch.Tensor, args: Namespace) -> torch.Tensor:
    """Restore one (C, H, W) image with the inference options of ``args``.

    A colour image given to a gray model (``--per-channel``) is restored as a batch of its three
    channels, which are put back together.
    """
    if image.shape[0] == 3 and model.in_channels == 1:
        return _run_batch(model, image[:, None], args)[:, 0]  # (3, 1, H, W) -> (3, H', W')
    return _run_batch(model, image[None], args)[0]  # (1, C, H, W) -> (C, H', W')


def _run_batch(model: nn.Module, batch: torch.Tensor, args: Namespace) -> torch.Tensor:
    """Restore a (B, C, H, W) batch with the inference options of ``args``."""
    batch = batch.to(next(model.parameters()).device)
    output = restore_batch(
        model,
        batch,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        k=args.k,
        ensemble=args.ensemble,
        progress=args.tile is not None and sys.stderr.isatty(),
    )  # fmt: skip  (a tile bar inside the image bar: one large image is one long step)
    return output.cpu()


def restore(args: Namespace) -> None:
    """``semanir restore``: restore every input image and write it to the output location."""
    if args.sigma is not None:
        check_sigma(args.sigma)
    noise_sigma = _noise_sigma(args)
    device = check_device(args.device)
    paths = list_images(args.inputs)
    targets = output_paths(paths, Path(args.output))
    check_writable(targets)
    model = _load(args, device)
    channels = _channels(model)
    if args.per_channel and channels != "gray":
        raise ValueError(
            f"--per-channel applies to gray models; this model takes {model.in_channels} channels"
        )
    before, after = [], []
    jobs = list(zip(paths, targets, strict=True))
    for index, (path, target) in enumerate(tqdm(jobs, desc="restore", disable=None)):
        image = _read_for_model(path, channels, args.per_channel)
        if noise_sigma is None:
            write_image(target, _run_model(model, image, args))
            continue
        noisy = add_gaussian_noise(image, noise_sigma, index_generator(args.seed, index))
        output = _run_model(model, noisy, args)
        write_image(target, output)
        if args.save_noisy:
            write_image(target.with_name(f"{target.stem}_noisy{target.suffix}"), noisy)
        before.append(float(psnr(noisy, image)))
        after.append(float(psnr(output, image)))
        tqdm.write(
            f"{path.name}: PSNR {before[-1]:.2f} dB (noisy) -> {after[-1]:.2f} dB (restored)"
        )
    if before:
        mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
        print(f"mean PSNR over {len(before)} image(s): {mean_before:.2f} dB -> {mean_after:.2f} dB")
    print(f"wrote {len(targets)} image(s) to {args.output}")


def _read_for_model(path: Path, channels: str, per_channel: bool) -> torch.Tensor:
    """Read ``path`` for a model taking ``channels``; say so when that converts the image.

    Args:
        path: the image file.
        channels: ``"gray"`` or ``"rgb"``, what the model takes.
        per_channel: keep a colour image for a gray model (restored channel by channel).
    """
    image = read_image(path)
    if image.shape[0] == 3 and channels == "gray" and per_channel:
        return image
    if image.shape[0] == 3 and channels == "gray":
        tqdm.write(
            f"semanir restore: warning: {path.name} is a colour image and the model is a gray "
            "model: restoring its BT.601 luma (--per-channel restores R, G and B one by one)",
            file=sys.stderr,
        )
    elif image.shape[0] == 1 and channels == "rgb":
        tqdm.write(
            f"semanir restore: warning: {path.name} is a gray image and the model is a colour "
            "model: restoring it as RGB",
            file=sys.stderr,
        )
    return convert_channels(image, channels)


def _is_gray_file(path: Path) -> bool:
    """Whether an image file holds one channel (its header's pixel mode; nothing decoded).

    A file Pillow cannot open counts as gray here: reading it reports the error.
    """
    try:
        with Image.open(path) as image:
            return image.mode in GRAY_MODES
    except (OSError, SyntaxError, ValueError):
        return True


def _noise_sigma(args: Namespace) -> float | None:
    """The noise level --add-noise asks for (its value, or --sigma when given without one)."""
    if args.add_noise is None:
        if args.sigma is not None:
            raise ValueError(
                "--sigma sets the level of --add-noise and does nothing without it (the models "
                "are blind: they take no noise level)"
            )
        return None
    if args.task != "denoise":
        raise ValueError("--add-noise applies to --task denoise only")
    sigma = args.sigma if args.add_noise == USE_SIGMA else args.add_noise
    if sigma is None:
        raise ValueError("--add-noise without a value needs --sigma")
    return check_sigma(sigma)


def output_paths(inputs: list[Path], output: Path) -> list[Path]:
    """Where each restored input goes: ``output`` itself for one input with an image extension,
    otherwise ``output / input.name`` (names must then be unique)."""
    if len(inputs) == 1 and is_image_file(output) and not output.is_dir():
        return [output]
    if is_image_file(output) and not output.is_dir():
        raise ValueError(
            f"-o/--output {output}: {len(inputs)} images cannot go into one image file; give an "
            "output folder (a name without a suffix)"
        )
    if output.suffix and not output.is_dir():
        raise ValueError(
            f"-o/--output {output}: {output.suffix!r} is not an image suffix "
            f"({', '.join(IMAGE_EXTENSIONS)}); an output folder name must have no suffix"
        )
    targets = [output / path.name for path in inputs]
    seen: dict[Path, Path] = {}
    for path, target in zip(inputs, targets, strict=True):
        if target in seen:
            raise ValueError(f"{seen[target]} and {path} would both be written to {target}")
        seen[target] = path
    return targets


def target_names(targets: list[Path]) -> str:
    """The first output path, and how many more, for messages."""
    more = f" (and {len(targets) - 1} more)" if len(targets) > 1 else ""
    return f"{targets[0]}{more}"


def check_writable(targets: list[Path]) -> None:
    """Fail before any work when the folder of an output cannot be created or written."""
    for folder in sorted({target.parent for target in targets}):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise ValueError(f"output {target_names(targets)}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(
                f"output {target_names(targets)}: cannot write to {existing} (permission denied)"
            )


def evaluate(args: Namespace) -> None:
    """``semanir eval``: degrade, restore and score every image; print and optionally save CSV."""
    degradation = _eval_degradation(args)
    paths = list_images(args.data)  # fail on missing or empty inputs before loading a model
    device = check_device(args.device)
    if args.csv:
        check_writable([Path(args.csv)])
    model = _load(args, device)
    colour = sum(not _is_gray_file(path) for path in paths)
    if colour and model.in_channels == 1:
        print(
            f"semanir eval: warning: {colour} of the {len(paths)} --data image(s) are colour and "
            "the model is a gray model: scoring their BT.601 luma",
            file=sys.stderr,
        )
    if args.task == "sr":
        degradation["scale"] = _eval_scale(args.scale, int(model.upscale))
    dataset = SyntheticDegradationDataset(
        args.data, args.task, channels=_channels(model), train=False, seed=args.seed, **degradation
    )
    metric_options = {
        "y_channel": args.task in ("sr", "jpeg") and model.in_channels == 3,
        "crop_border": degradation.get("scale", 0),
    }
    rows = []
    for index in tqdm(range(len(dataset)), desc="eval", disable=None):
        sample = dataset[index]
        degraded, clean = sample["lq"], sample["gt"]
        baseline = bicubic_resize(degraded, dataset.scale) if args.task == "sr" else degraded
        output = _run_model(model, degraded, args)
        rows.append(
            {
                "image": dataset.paths[index].name,
                "psnr_in": float(psnr(baseline, clean, **metric_options)),
                "ssim_in": float(ssim(baseline, clean, **metric_options)),
                "psnr_out": float(psnr(output, clean, **metric_options)),
                "ssim_out": float(ssim(output, clean, **metric_options)),
            }
        )
    rows.append(mean_row(rows))
    print(format_table(rows, title=_describe(args, degradation)))
    if args.csv:
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}")


def _eval_degradation(args: Namespace) -> dict[str, float | int]:
    """The degradation options --task needs, validated; SR's scale is resolved later."""
    if args.task == "denoise":
        if args.sigma is None:
            raise ValueError("--task denoise needs --sigma (0-255)")
        return {"sigma": check_sigma(args.sigma)}
    if args.task == "jpeg":
        if args.quality is None:
            raise ValueError("--task jpeg needs --quality (1-95)")
        return {"quality": check_quality(args.quality)}
    if args.scale is not None:
        check_scale(args.scale)
    return {}


def _eval_scale(requested: int | None, model_scale: int) -> int:
    if requested is not None and requested != model_scale:
        raise ValueError(f"--scale {requested} does not match the model's x{model_scale}")
    return check_scale(model_scale)


def _describe(args: Namespace, degradation: dict[str, float | int]) -> str:
    settings = ", ".join(f"{key}={value:g}" for key, value in degradation.items())
    return f"{args.task} ({settings}), model: {args.model or 'bundled default'}"


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A row named 'mean' holding the column means of ``rows``."""
    columns = [key for key in rows[0] if key != "image"]
    return {"image": "mean", **{key: sum(r[key] for r in rows) / len(rows) for key in columns}}


def format_table(rows: list[dict[str, Any]], title: str) -> str:
    """Plain-text table: PSNR (dB, 2 decimals) and SSIM (4 decimals), input and restored."""
    header = f"{'image':<24} {'PSNR in':>8} {'SSIM in':>8} {'PSNR out':>9} {'SSIM out':>9}"
    lines = [title, header, "-" * len(header)]
    for row in rows:
        if row["image"] == "mean":
            lines.append("-" * len(header))
        lines.append(
            f"{row['image']:<24} {row['psnr_in']:>8.2f} {row['ssim_in']:>8.4f} "
            f"{row['psnr_out']:>9.2f} {row['ssim_out']:>9.4f}"
        )
    return "\n".join(lines)


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV atomically (a temporary file renamed onto ``path``)."""
    with (
        atomic_write(path, make_parents=True) as temp_path,
        temp_path.open("w", newline="") as handle,
    ):
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
