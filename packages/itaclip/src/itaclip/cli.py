"""The ``itaclip`` command.

itaclip segment IMG... --classes "cat,dog,sky" -o OUT [--model NAME --pretrained TAG]
                [--aux-file AUX.json|AUX.txt --alpha A] [--background NAME] [--output-size HxW]
itaclip eval --dataset voc21 --root DIR [--nproc N] [--limit N] [--json FILE]
itaclip aux --lm HF_ID_OR_DIR --classes "cat,dog" --kind definition -o AUX.json|AUX.txt

Classes are comma-separated; ``|`` separates the synonyms of one class (``"person|man,dog"``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from itaclip.auxfile import load_aux_texts, write_aux_file
from itaclip.datasets import DATASETS, SegmentationDataset
from itaclip.evaluate import evaluate, iou_from_confusion
from itaclip.io import load_image, save_png
from itaclip.presets import PRESETS
from itaclip.segmenter import Segmenter
from itaclip.text import atomic_write_bytes
from itaclip.viz import overlay


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip model name")
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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache-dir", default=None, help="text-embedding cache folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itaclip", description=__doc__.split("\n\n")[0])
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
        help="size of the label maps (mmseg ori_shape: slide on the resized image, then "
        "resize the logits and run PAMR at this size); default: the image's",
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
    return parser


def load_segmenter(args: argparse.Namespace, preset: str | None) -> Segmenter:
    overrides = {}
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
    return Segmenter.from_pretrained(
        args.model,
        args.pretrained or None,
        preset=preset,
        device=args.device,
        cache_dir=args.cache_dir,
        **overrides,
    )


def parse_size_option(text: str) -> tuple[int, int]:
    """``"480x640"`` -> ``(480, 640)`` (height x width)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected HxW with positive integers, got {text!r}")
    height, width = (int(part) for part in parts)
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"expected HxW with positive integers, got {text!r}")
    return height, width


def parse_background_option(text: str | None, classes: list[list[str]]) -> int | None:
    """A class name (any of its names) or a 0-based index -> the class index."""
    if text is None:
        return None
    if text.strip().isdigit():
        index = int(text)
        if index >= len(classes):
            raise SystemExit(f"--background {index} is not a class index in [0, {len(classes)})")
        return index
    for index, names in enumerate(classes):
        if text.strip() in names:
            return index
    raise SystemExit(f"--background {text!r} names none of the classes {[n[0] for n in classes]}")


def parse_class_option(text: str) -> list[list[str]]:
    """``"person|man,dog"`` -> ``[["person", "man"], ["dog"]]``."""
    return [[name.strip() for name in item.split("|")] for item in text.split(",")]


def read_aux_option(
    path: Path, classes: list[list[str]], background: int | None, check_names: bool = True
) -> list[str | None]:
    """The texts of ``--aux-file``: an ``itaclip aux`` JSON file, or the official format."""
    if path.suffix.lower() != ".json":
        try:
            return load_aux_texts(path, classes, background, check_names)
        except (OSError, ValueError) as error:
            raise SystemExit(f"--aux-file: {error}") from error
    data = json.loads(path.read_text())
    names = [names[0] for names in classes]
    if data["classes"] != names:
        raise SystemExit(
            f"{path} holds auxiliary texts for {data['classes']}, but --classes names {names}"
        )
    return data["texts"]


def run_segment(args: argparse.Namespace) -> int:
    segmenter = load_segmenter(args, args.preset)
    classes = parse_class_option(args.classes)
    background = parse_background_option(args.background, classes)
    aux_texts = None
    if args.aux_file is not None:
        aux_texts = read_aux_option(args.aux_file, classes, background, not args.aux_ignore_names)
    for path in args.images:
        image = load_image(path)
        result = segmenter(image, classes, aux_texts, background, output_size=args.output_size)
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
        print(f"{path} -> {args.output / f'{path.stem}_overlay.png'}")
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
        conf = evaluate(segmenter, dataset, args.limit)
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
            atomic_write_bytes(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_eval(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise SystemExit(f"--nproc must be >= 1, got {args.nproc}")
    with tempfile.TemporaryDirectory() as tmp:
        json_path = args.json or Path(tmp) / "result.json"
        args.json = json_path
        rendezvous = str(Path(tmp) / "rendezvous")
        if args.nproc == 1:
            eval_worker(0, 1, args, rendezvous)
        else:
            torch.multiprocessing.spawn(eval_worker, (args.nproc, args, rendezvous), args.nproc)
        report = json.loads(Path(json_path).read_text())
    print(f"{report['dataset']}: mIoU {100 * report['miou']:.2f} over {report['samples']} images")
    return 0


def run_aux(args: argparse.Namespace) -> int:
    from itaclip.generate import AuxTextGenerator, SamplingConfig

    names = [names[0] for names in parse_class_option(args.classes)]
    generator = AuxTextGenerator.from_pretrained(args.lm)
    generator.sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    texts = generator.generate(args.kind, names)
    if args.output.suffix.lower() == ".json":
        report = {"lm": args.lm, "kind": args.kind, "classes": names, "texts": texts}
        atomic_write_bytes(args.output, lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    else:  # the official format: one line per class, whitespace runs collapsed
        write_aux_file(args.output, names, [" ".join(text.split()) for text in texts])
    for name, text in zip(names, texts, strict=True):
        print(f"{name} >= {text}")
    return 0


COMMANDS = {"segment": run_segment, "eval": run_eval, "aux": run_aux}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``itaclip`` console script; returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return COMMANDS[args.command](args)
