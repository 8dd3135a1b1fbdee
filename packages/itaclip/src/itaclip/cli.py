"""The ``itaclip`` command.

itaclip segment IMG... --classes "cat,dog,sky" -o OUT [--model NAME --pretrained TAG]
                [--aux-file AUX.json|AUX.txt --alpha A] [--background NAME] [--output-size HxW]
itaclip eval --dataset voc21 --root DIR [--nproc N] [--limit N] [--json FILE]
itaclip aux --lm HF_ID_OR_DIR --classes "cat,dog" --kind definition -o AUX.json|AUX.txt
itaclip tiny-model DIR [--seed 0]     # a tiny random open_clip model folder (offline runs)

Classes are comma-separated; ``|`` separates the synonyms of one class (``"person|man,dog"``).

Errors: a bad input ends with one line ``itaclip COMMAND: error: ...`` naming the flag and exit
status 2, found before any model is loaded; a failure while working (disk full, a model that
cannot be loaded or downloaded) exits 1; Ctrl-C exits 130 with ``itaclip COMMAND: interrupted``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from common_kernels.cli import (
    Parser,
    UsageError,
    WorkError,
    check_device,
    check_file_writable,
    check_folder_writable,
    command_prog,
    run_main,
)
from common_kernels.files import (
    ImageReadError,
    check_output_folder_name,
    parse_size,
    write_json,
)
from itaclip.auxfile import load_aux_texts, write_aux_file
from itaclip.datasets import DATASETS, SegmentationDataset
from itaclip.evaluate import evaluate, iou_from_confusion
from itaclip.io import load_image, save_png
from itaclip.presets import PRESETS
from itaclip.segmenter import Segmenter, SegmenterConfig, progress_disabled
from itaclip.text import parse_classes
from itaclip.tiny import CONFIG_FILE, save_tiny_model
from itaclip.viz import overlay

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="ViT-B-16-quickgelu",
        help="open_clip model name, hf-hub:org/repo, or a folder holding open_clip_config.json "
        "(local-dir:DIR; `itaclip tiny-model DIR` writes one)",
    )
    parser.add_argument("--pretrained", default="openai", help="open_clip weights tag or file")
    parser.add_argument("--stride", type=int, default=None, help="sliding-window stride")
    parser.add_argument(
        "--short-side", type=int, default=None, help="resize target of the short side"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="images per ViT pass")
    parser.add_argument("--no-pamr", action="store_true", help="skip PAMR refinement")
    parser.add_argument("--faithful", action="store_true", help="official quirks on")
    parser.add_argument(
        "--no-img-engineering",
        action="store_true",
        help="encode the original crops only (no gray, blur or flips; official switch off)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="text-embedding cache folder")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars (shown only on a terminal)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="itaclip", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    segment = commands.add_parser("segment", help="segment images, write overlays")
    segment.add_argument("images", nargs="+", type=Path)
    segment.add_argument("--classes", required=True, help='e.g. "cat,dog,person|man"')
    segment.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    segment.add_argument("--preset", choices=sorted(PRESETS), default=None)
    segment.add_argument(
        "--aux-file",
        type=Path,
        default=None,
        help="auxiliary texts: a .json from `itaclip aux`, or any other file in the official "
        "format ('name >=text' lines, one per non-background class, in class order)",
    )
    segment.add_argument(
        "--aux-ignore-names",
        action="store_true",
        help="do not check the names of an official-format --aux-file against --classes",
    )
    segment.add_argument("--alpha", type=float, default=None, help="auxiliary-text weight")
    segment.add_argument(
        "--background",
        default=None,
        help="background class (name or 0-based index): enables the thresholds, keeps its "
        "features unmixed and needs no line in an official-format --aux-file",
    )
    segment.add_argument(
        "--output-size",
        type=parse_size_option,
        default=None,
        metavar="HxW",
        help="size of the label maps, height x width (480x640 is 640 px wide; one number is a "
        "square) (mmseg ori_shape: slide on the resized image, then resize the logits and run "
        "PAMR at this size); default: the image's",
    )
    add_model_options(segment)
    run_eval = commands.add_parser("eval", help="mIoU on a benchmark")
    run_eval.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    run_eval.add_argument("--root", type=Path, required=True)
    run_eval.add_argument("--split", default=None)
    run_eval.add_argument("--limit", type=int, default=None, help="first N samples only")
    run_eval.add_argument("--nproc", type=int, default=1, help="processes (gloo on the CPU)")
    run_eval.add_argument("--json", type=Path, default=None, help="write results here")
    add_model_options(run_eval)
    aux = commands.add_parser("aux", help="auxiliary texts (definitions/synonyms) from an LLM")
    aux.add_argument("--lm", required=True, help="transformers causal LM (hub id or folder)")
    aux.add_argument("--classes", required=True, help='e.g. "cat,dog,person|man"')
    aux.add_argument("--kind", choices=("definition", "synonym"), default="definition")
    aux.add_argument("--max-new-tokens", type=int, default=256)
    aux.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="file to write: .json, or any other suffix for the official 'name >= text' lines",
    )
    tiny = commands.add_parser(
        "tiny-model", help="write a tiny random open_clip model folder (offline smoke runs)"
    )
    tiny.add_argument("directory", type=Path, help="folder to write (use as segment --model DIR)")
    tiny.add_argument("--seed", type=int, default=0, help="torch seed of the random weights")
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``SegmenterConfig`` fields set by the command-line options."""
    overrides: dict[str, Any] = {}
    if args.stride is not None:
        overrides["stride"] = args.stride
    if args.short_side is not None:
        overrides["short_side"] = args.short_side
    if getattr(args, "alpha", None) is not None:
        overrides["alpha"] = args.alpha
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.no_pamr:
        overrides["pamr"] = False
    if args.faithful:
        overrides["faithful"] = True
    if args.no_img_engineering:
        overrides["img_engineering"] = False
    return overrides


def check_settings(args: argparse.Namespace, preset: str | None) -> None:
    """The inference options, each error naming its flag and the accepted range."""
    crop = SegmenterConfig().crop
    if args.stride is not None and not 1 <= args.stride <= crop:
        raise UsageError(f"--stride must be in [1, {crop}] (the crop size), got {args.stride}")
    if args.short_side is not None and args.short_side < 1:
        raise UsageError(f"--short-side must be >= 1, got {args.short_side}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    alpha = getattr(args, "alpha", None)
    if alpha is not None and not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise UsageError(f"--alpha must be in [0, 1], got {alpha}")
    overrides = config_overrides(args)
    SegmenterConfig.from_preset(preset, **overrides) if preset else SegmenterConfig(**overrides)


def check_model(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """``--model``/``--pretrained`` -> the (model name, weights) for open_clip, checked offline.

    A built-in name must be one of ``open_clip.list_models()`` and ``--pretrained`` one of its
    tags or a file; a folder (plain or ``local-dir:``) must hold ``open_clip_config.json``;
    ``hf-hub:`` names are passed on (the hub cannot be checked before loading).
    """
    if model.startswith(HF_HUB):
        return model, None
    if model.startswith(LOCAL_DIR):
        folder = Path(model[len(LOCAL_DIR) :])
    elif model in open_clip.list_models():
        if pretrained and pretrained not in open_clip.list_pretrained_tags_by_model(model):
            if Path(pretrained).is_dir():
                raise UsageError(f"--pretrained {pretrained} is a folder, not a weights file")
            if not Path(pretrained).is_file():
                tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
                raise UsageError(
                    f"--pretrained {pretrained!r} is neither a weights tag of {model} ({tags}) "
                    "nor an existing file ('' = random weights)"
                )
        return model, pretrained or None
    elif Path(model).is_dir():
        folder = Path(model)
    elif Path(model).exists():
        raise UsageError(
            f"--model {model} is a file; expected an open_clip model name, hf-hub:org/repo or "
            f"a folder holding {CONFIG_FILE}"
        )
    else:
        raise UsageError(
            f"--model {model!r} is neither a known open_clip model name (e.g. ViT-B-16-quickgelu; "
            "see open_clip.list_models()) nor an existing folder"
        )
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"--model {model}: the folder {folder} {what}")
    config = folder / CONFIG_FILE
    try:
        ok = "model_cfg" in json.loads(config.read_text())
    except (OSError, ValueError, TypeError):
        ok = False
    if not ok:
        raise UsageError(
            f"--model {model}: {config} is missing or is not an open_clip config "
            '(a JSON object with "model_cfg"; `itaclip tiny-model DIR` writes one)'
        )
    return f"{LOCAL_DIR}{folder}", None


def check_image_file(path: Path) -> None:
    """Fail unless ``path`` is a readable, complete image file (decoded, then dropped)."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an image file (give the images, e.g. DIR/*.png)")
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    try:
        load_image(path)
    except ImageReadError as error:
        raise UsageError(f"{path} is not a readable image ({error.reason})") from None


def parse_size_option(text: str) -> tuple[int, int]:
    """``"480x640"`` -> ``(480, 640)`` (height x width), ``"480"`` -> ``(480, 480)``: the rule of
    ``common_kernels.files.parse_size``, as in every package (an argparse type)."""
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_background_option(text: str | None, classes: list[list[str]]) -> int | None:
    """A class name (any of its names) or a 0-based index -> the class index."""
    if text is None:
        return None
    if text.strip().isdigit():
        index = int(text)
        if index >= len(classes):
            raise UsageError(f"--background {index} is not a class index in [0, {len(classes)})")
        return index
    for index, names in enumerate(classes):
        if text.strip() in names:
            return index
    raise UsageError(f"--background {text!r} names none of the classes {[n[0] for n in classes]}")


def parse_class_option(text: str) -> list[list[str]]:
    """``"person|man,dog"`` -> ``[["person", "man"], ["dog"]]``."""
    return [[name.strip() for name in item.split("|")] for item in text.split(",")]


def check_class_option(text: str) -> list[list[str]]:
    """``--classes`` parsed and checked (no empty or duplicate names)."""
    classes = parse_class_option(text)
    try:
        parse_classes(classes)
    except (TypeError, ValueError) as error:
        raise UsageError(f"--classes {text!r}: {error}") from None
    return classes


def read_aux_option(
    path: Path, classes: list[list[str]], background: int | None, check_names: bool = True
) -> list[str | None]:
    """The texts of ``--aux-file``: an ``itaclip aux`` JSON file, or the official format."""
    if path.is_dir():
        raise UsageError(f"--aux-file {path} is a folder, not a file")
    if not path.exists():
        raise UsageError(f"--aux-file {path} does not exist")
    if path.suffix.lower() != ".json":
        try:
            return load_aux_texts(path, classes, background, check_names)
        except (OSError, ValueError) as error:
            raise UsageError(f"--aux-file: {error}") from None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UsageError(f"--aux-file {path}: not readable JSON ({error})") from None
    names = [names[0] for names in classes]
    texts = data.get("texts") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("classes"), list)
        or not isinstance(texts, list)
        or not all(isinstance(text, str) and text.strip() for text in texts)
        or len(texts) != len(data["classes"])
    ):
        raise UsageError(
            f"--aux-file {path}: expected the JSON of `itaclip aux` (an object with lists "
            '"classes" and "texts" of equal length, non-empty texts)'
        )
    if data["classes"] != names:
        raise UsageError(
            f"--aux-file {path} holds auxiliary texts for {data['classes']}, "
            f"but --classes names {names}"
        )
    return texts


def load_segmenter(args: argparse.Namespace, preset: str | None) -> Segmenter:
    """The segmenter of the (checked) model options; a failure to load exits 1."""
    model, pretrained = check_model(args.model, args.pretrained)
    device = check_device(args.device)
    try:
        return Segmenter.from_pretrained(
            model,
            pretrained,
            preset=preset,
            device=device,
            cache_dir=args.cache_dir,
            **config_overrides(args),
        )
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        weights = f" --pretrained {pretrained!r}" if pretrained else ""
        raise WorkError(f"cannot load --model {args.model}{weights}: {error}") from error


def check_common(args: argparse.Namespace, preset: str | None) -> None:
    """Checks shared by ``segment`` and ``eval``: settings, device, model, cache folder."""
    check_settings(args, preset)
    check_device(args.device)
    check_model(args.model, args.pretrained)
    if args.cache_dir is not None:
        check_folder_writable(args.cache_dir, "--cache-dir")


def check_segment(args: argparse.Namespace) -> tuple[list[list[str]], int | None, list | None]:
    """Every ``segment`` input checked before the model is loaded."""
    check_common(args, args.preset)
    classes = check_class_option(args.classes)
    background = parse_background_option(args.background, classes)
    check_folder_writable(args.output, "-o/--output")
    try:
        check_output_folder_name(args.output, "-o/--output")
    except ValueError as error:
        raise UsageError(str(error)) from None
    outputs: dict[str, Path] = {}
    for path in args.images:
        check_image_file(path)
        if path.stem in outputs:
            raise UsageError(
                f"{outputs[path.stem]} and {path} would both be written to "
                f"{args.output / f'{path.stem}_overlay.png'}"
            )
        outputs[path.stem] = path
    aux_texts = None
    if args.aux_file is not None:
        aux_texts = read_aux_option(args.aux_file, classes, background, not args.aux_ignore_names)
    return classes, background, aux_texts


def run_segment(args: argparse.Namespace) -> int:
    classes, background, aux_texts = check_segment(args)
    segmenter = load_segmenter(args, args.preset)
    progress = False if args.quiet else None
    images = tqdm(args.images, desc="images", unit="image", disable=progress_disabled(progress))
    for path in images:
        image = load_image(path)
        result = segmenter(
            image, classes, aux_texts, background, output_size=args.output_size, progress=progress
        )
        if args.output_size is not None:  # the overlay is drawn at the labels' size
            image = F.interpolate(
                image[None], size=args.output_size, mode="bilinear", align_corners=False
            )[0].clamp(0, 1)
        save_png(
            overlay(image, result.labels, result.class_names),
            args.output / f"{path.stem}_overlay.png",
        )
        labels = Image.fromarray(result.labels.numpy().astype(np.uint8))
        save_png(labels, args.output / f"{path.stem}_labels.png")
        tqdm.write(f"{path} -> {args.output / f'{path.stem}_overlay.png'}", file=sys.stdout)
    return 0


def eval_worker(rank: int, world: int, args: argparse.Namespace, rendezvous: str) -> None:
    """One evaluation process; rank 0 writes the results JSON."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world
        )
    try:
        segmenter = load_segmenter(args, args.dataset)
        dataset = SegmentationDataset(args.dataset, args.root, args.split)
        conf = evaluate(segmenter, dataset, args.limit, progress=False if args.quiet else None)
        if rank == 0:
            result = iou_from_confusion(conf)
            report = {
                "dataset": args.dataset,
                "samples": len(dataset) if args.limit is None else min(args.limit, len(dataset)),
                "processes": world,
                "miou": result.miou,
                "accuracy": result.accuracy,
                "iou": result.iou,
                "confusion": conf.tolist(),
            }
            write_json(args.json, report, indent=1, make_parents=True)
    except KeyboardInterrupt:
        if world == 1:
            raise
        raise SystemExit(130) from None  # spawned: the parent reports the interruption
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def check_eval(args: argparse.Namespace) -> None:
    """Every ``eval`` input checked before the model is loaded."""
    if args.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1 (or left out for all images), got {args.limit}")
    check_common(args, args.dataset)
    if args.json is not None:
        check_file_writable(args.json, "--json")
    if not args.root.is_dir():
        what = "is a file, not a folder" if args.root.exists() else "does not exist"
        raise UsageError(f"--root {args.root} {what}")
    try:
        dataset = SegmentationDataset(args.dataset, args.root, args.split)
    except FileNotFoundError as error:
        raise UsageError(f"--root {args.root} is not a {args.dataset} folder: {error}") from None
    if len(dataset) == 0:
        raise UsageError(f"--root {args.root}: the {args.dataset} split list names no images")
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    for sample in dataset.samples[:count]:
        for path, what in ((sample.image, "image"), (sample.label, "label map")):
            if not path.is_file():
                raise UsageError(f"--root {args.root}: {what} of {sample.name} not found: {path}")


def run_eval(args: argparse.Namespace) -> int:
    check_eval(args)
    with tempfile.TemporaryDirectory() as tmp:
        json_path = args.json or Path(tmp) / "result.json"
        args.json = json_path
        rendezvous = str(Path(tmp) / "rendezvous")
        if args.nproc == 1:
            eval_worker(0, 1, args, rendezvous)
        else:
            try:
                torch.multiprocessing.spawn(eval_worker, (args.nproc, args, rendezvous), args.nproc)
            except torch.multiprocessing.ProcessExitedException as error:
                if error.exit_code == 130:
                    raise KeyboardInterrupt from None
                raise WorkError(f"evaluation process {error.error_index} failed: {error}") from None
            except torch.multiprocessing.ProcessRaisedException as error:
                last = str(error).strip().splitlines()[-1]
                raise WorkError(f"an evaluation process failed: {last}") from None
        report = json.loads(Path(json_path).read_text())
    print(f"{report['dataset']}: mIoU {100 * report['miou']:.2f} over {report['samples']} images")
    return 0


def check_aux(args: argparse.Namespace) -> list[str]:
    """Every ``aux`` input checked before the language model is loaded."""
    if importlib.util.find_spec("transformers") is None:
        raise UsageError("needs transformers: pip install 'itaclip[generate]'")
    names = [names[0] for names in check_class_option(args.classes)]
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    check_file_writable(args.output, "-o/--output")
    lm = Path(args.lm)
    if lm.exists() and not lm.is_dir():
        raise UsageError(f"--lm {args.lm} is a file; expected a hub id or a model folder")
    if args.lm.startswith((".", "/", "~")) and not lm.expanduser().exists():
        raise UsageError(f"--lm {args.lm}: the folder does not exist")
    return names


def run_aux(args: argparse.Namespace) -> int:
    from itaclip.generate import AuxTextGenerator, SamplingConfig

    names = check_aux(args)
    try:
        generator = AuxTextGenerator.from_pretrained(args.lm)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise WorkError(f"cannot load --lm {args.lm}: {error}") from error
    generator.sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    texts = generator.generate(args.kind, names)
    if args.output.suffix.lower() == ".json":
        report = {"lm": args.lm, "kind": args.kind, "classes": names, "texts": texts}
        write_json(args.output, report, indent=1, make_parents=True)
    else:  # the official format: one line per class, whitespace runs collapsed
        write_aux_file(args.output, names, [" ".join(text.split()) for text in texts])
    for name, text in zip(names, texts, strict=True):
        print(f"{name} >= {text}")
    return 0


def run_tiny_model(args: argparse.Namespace) -> int:
    check_folder_writable(args.directory, "DIR")
    print(f"wrote {save_tiny_model(args.directory, seed=args.seed)}")
    return 0


COMMANDS = {"segment": run_segment, "eval": run_eval, "aux": run_aux, "tiny-model": run_tiny_model}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``itaclip`` console script; returns the exit status.

    Bad inputs print ``itaclip COMMAND: error: ...`` (one line) and return 2, failures while
    working return 1, Ctrl-C prints ``itaclip COMMAND: interrupted`` and returns 130.

    Args:
        argv: command-line arguments without the program name (None = ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)

    return run_main(command_prog("itaclip", argv, COMMANDS), run)


if __name__ == "__main__":
    sys.exit(main())
