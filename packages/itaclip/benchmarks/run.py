"""itaclip speed and memory benchmark: batched inference vs the official per-crop procedure.

For each image size and sliding-window stride, two methods run on the same random image with the
same random ViT weights and the same random text features of a COCO-Stuff-sized vocabulary (171
classes, 183 queries), each in a fresh subprocess (peak memory = ``ru_maxrss`` of that process):

* ``official``: written here after the official procedure: per window, five batch-1 ViT passes
  (original, gray, blur, vertical flip, horizontal flip), the window's logits padded to the full
  canvas and added, a count matrix, PAMR on all query channels at once, and the class max
  through a one-hot (C, Q, H, W) product (chunked over classes here so it fits in memory).
* ``itaclip``: ``Segmenter.query_logits`` (crops x variants batched, slice-add accumulation,
  chunked PAMR) and the segment max of ``itaclip.postprocess``.

Reported per configuration: ViT forward calls and images, wall time per image (median, min, max
over repeats after a warm-up), the part of it spent in the ViT (last repeat), peak memory, and
the max abs difference of the logits and class probabilities between the two methods.

``--device cuda`` runs both on the GPU with the ViT under ``--dtype`` autocast (default fp16, as
the official code runs CLIP on a GPU): 448x448 at stride 28 and 896x896 at stride 28; times are
taken after ``torch.cuda.synchronize()``, the ViT's share with CUDA events, and memory is the
peak ``torch.cuda.max_memory_allocated()`` after the model is loaded. Results:
``results/itaclip_bench{,_quick}{,_cuda}.{json,md,png}``.

    python benchmarks/run.py                # ViT-B/16-sized random weights, 448 px, strides 28, 112
    python benchmarks/run.py --quick        # a tiny ViT on a small image (seconds)
    python benchmarks/run.py --device cuda  # ViT-B/16 on the GPU, 448 and 896 px, stride 28
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NUM_CLASSES, NUM_QUERIES = 171, 183
TINY_CONFIG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# (image side, stride) cases of each setup
FULL = {"model": "ViT-B-16-quickgelu", "crop": 224, "cases": [(448, 28), (448, 112)]}
QUICK = {"model": "itaclip-bench-tiny", "crop": 64, "cases": [(96, 16), (96, 32)]}
CUDA = {"model": "ViT-B-16-quickgelu", "crop": 224, "cases": [(448, 28), (896, 28)]}
DTYPES = ("fp32", "fp16", "bf16")


def build_model(name: str, device: str = "cpu"):
    """Random-weight open_clip model (seed 0); the tiny one from a config registered here.

    Args:
        name: open_clip architecture name (``ViT-B-16-quickgelu``) or the tiny bench model.
        device: ``"cpu"``, ``"cuda"`` (built on the CPU, then moved) or ``"meta"`` (shapes
            only: no memory, no weights).
    """
    import open_clip
    import torch

    if name == QUICK["model"] and name not in open_clip.list_models():
        config = Path(tempfile.mkdtemp()) / f"{name}.json"
        config.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(config)
    if device == "meta":
        with torch.device("meta"):
            return open_clip.create_model(name, pretrained=None, device="meta").eval()
    torch.manual_seed(0)
    return open_clip.create_model(name, pretrained=None).to(device).eval()


def count_vit(encoder, device: str = "cpu") -> dict:
    """Hooks on the ViT wrapper counting its calls, images and time into the returned dict.

    On the CPU ``seconds`` adds up the wall time of every call. On CUDA each call records a
    pair of CUDA events in ``events`` instead (no host synchronisation between calls);
    :func:`vit_seconds` adds them up once the work is done.
    """
    import torch

    counter = {"calls": 0, "images": 0, "seconds": 0.0, "events": []}
    started = []

    def before(module, inputs):
        if device == "cuda":
            started.append(torch.cuda.Event(enable_timing=True))
            started[-1].record()
        else:
            started.append(time.perf_counter())

    def after(module, inputs, output):
        counter["calls"] += 1
        counter["images"] += inputs[0].shape[0]
        if device == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            counter["events"].append((started.pop(), end))
        else:
            counter["seconds"] += time.perf_counter() - started.pop()

    encoder.register_forward_pre_hook(before)
    encoder.register_forward_hook(after)
    return counter


def reset_counter(counter: dict) -> None:
    """Zero the counts of :func:`count_vit` (before a repeat)."""
    counter.update(calls=0, images=0, seconds=0.0, events=[])


def vit_seconds(counter: dict) -> float:
    """Seconds spent in the ViT: the wall time sum, or the CUDA events' (after a synchronize)."""
    from common_kernels.runtime.bench import synchronize

    if not counter["events"]:
        return counter["seconds"]
    synchronize("cuda")
    return sum(start.elapsed_time(end) for start, end in counter["events"]) / 1000


def official_query_logits(seg, image, text):
    """The official procedure: per-window, per-variant batch-1 passes, full-canvas padding.

    The ViT runs under the segmenter's autocast (``config.precision``), as ``Segmenter`` does;
    everything after it in fp32 on the image's device.
    """
    import torch
    import torch.nn.functional as F

    from itaclip.engineering import gaussian_blur, grayscale, normalize

    cfg = seg.config
    _, height, width = image.shape
    total = torch.zeros(1, text.shape[0], height, width, device=image.device)
    count = torch.zeros(1, 1, height, width, device=image.device)

    def windows(size):
        n = max(size - cfg.crop + cfg.stride - 1, 0) // cfg.stride + 1
        return [max(min(i * cfg.stride, size - cfg.crop), 0) for i in range(n)]

    def logits_of(pixels, size):
        with seg.autocast():
            feats = seg.encoder(pixels)[0].float()  # (h, w, C)
        lg = (feats @ text.T).permute(2, 0, 1)[None]  # (1, Q, h, w)
        return feats, F.interpolate(lg, size=size, mode="bilinear", align_corners=False)

    for top in windows(height):
        for left in windows(width):
            crop = image[None, :, top : top + cfg.crop, left : left + cfg.crop]
            size = tuple(crop.shape[-2:])
            normed = normalize(crop, seg.mean, seg.std)
            gray = normalize(grayscale(crop), seg.mean, seg.std)
            blur = normalize(gaussian_blur(crop), seg.mean, seg.std)
            feats = [logits_of(v, size)[0] for v in (normed, gray, blur)]
            first = ((feats[0] + feats[1] + feats[2]) / 3 @ text.T).permute(2, 0, 1)[None]
            first = F.interpolate(first, size=size, mode="bilinear", align_corners=False)
            vflip = logits_of(normed.flip(-2), size)[1].flip(-2)
            hflip = logits_of(normed.flip(-1), size)[1].flip(-1)
            logits = cfg.lam * first + (1 - cfg.lam) * (vflip + hflip) / 2
            total += F.pad(logits, (left, width - left - size[1], top, height - top - size[0]))
            count[..., top : top + size[0], left : left + size[1]] += 1
    return total / count  # (1, Q, H, W)


def official_pamr(image, mask, iterations=10, dilations=(8, 16)):
    """PAMR with all query channels and all 16 neighbours stacked at once."""
    import torch
    import torch.nn.functional as F

    from itaclip.refinement import pamr_affinity

    aff = pamr_affinity(image, dilations)[:, None]  # (1, 1, K, H, W)
    pad = max(dilations)
    height, width = mask.shape[-2:]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for _ in range(iterations):
        padded = F.pad(mask, (pad, pad, pad, pad), mode="replicate")
        neighbours = torch.stack(
            [
                padded[
                    ..., pad + dy * d : pad + dy * d + height, pad + dx * d : pad + dx * d + width
                ]
                for d in dilations
                for dy, dx in offsets
            ],
            dim=2,
        )  # (1, Q, K, H, W)
        mask = (neighbours * aff).sum(2)
    return mask


def official_class_probs(logits, query_class, num_classes, logit_scale, budget=2**30):
    """Class max through a one-hot (C, Q, H, W) product, chunked over classes to fit ``budget``."""
    import torch

    probs = (logits * logit_scale).softmax(0)  # (Q, H, W)
    one_hot = torch.nn.functional.one_hot(query_class.to(logits.device), num_classes)
    one_hot = one_hot.T.float()  # (C, Q)
    per_class = probs.numel() * 4
    step = max(1, budget // per_class)
    parts = [
        (one_hot[c : c + step, :, None, None] * probs[None]).amax(1)  # (c, Q, H, W) -> (c, H, W)
        for c in range(0, num_classes, step)
    ]
    return torch.cat(parts)


def worker(args: argparse.Namespace) -> None:
    """One configuration in this (fresh) process; writes its JSON and arrays to ``args.out``."""
    import numpy as np
    import torch

    from common_kernels.runtime.bench import peak_rss_mib, synchronize
    from common_kernels.runtime.files import write_text
    from itaclip import Segmenter, SegmenterConfig
    from itaclip.engineering import normalize
    from itaclip.postprocess import segment_max

    torch.set_num_threads(args.threads)
    model = build_model(args.model, args.device)
    config = SegmenterConfig(
        short_side=None, crop=args.crop, stride=args.stride, batch_size=args.batch_size,
        precision=args.dtype,
    )  # fmt: skip
    seg = Segmenter(model, tokenizer=None, config=config)
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(3, args.image, args.image, generator=gen)
    text = torch.nn.functional.normalize(
        torch.randn(NUM_QUERIES, seg.encoder.out_dim, generator=gen), dim=-1
    )
    image, text = image.to(args.device), text.to(args.device)
    query_class = torch.cat([torch.arange(NUM_CLASSES), torch.arange(NUM_QUERIES - NUM_CLASSES)])
    query_class = query_class.sort().values
    segments = [(int(s), int(e)) for s, e in _segments(query_class, NUM_CLASSES)]
    counter = count_vit(seg.encoder, args.device)
    if args.device == "cuda":
        model_gpu_mib = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()

    def run():
        reset_counter(counter)
        with torch.no_grad():
            if args.method == "official":
                logits = official_query_logits(seg, image, text)
                logits = official_pamr(normalize(image[None], seg.mean, seg.std), logits)[0]
                probs = official_class_probs(logits, query_class, NUM_CLASSES, 50.0)
            else:
                logits = seg.query_logits(image, text)
                probs = segment_max((logits * 50.0).softmax(0), segments)
        return logits, probs

    times = []
    for index in range(args.warmup + args.repeats):
        synchronize(args.device)
        start = time.perf_counter()
        logits, probs = run()
        synchronize(args.device)
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    np.save(args.out.with_suffix(".logits.npy"), logits.cpu().numpy())
    np.save(args.out.with_suffix(".probs.npy"), probs.cpu().numpy())
    result = {
        "method": args.method,
        "image": args.image,
        "stride": args.stride,
        "vit_calls": counter["calls"],
        "vit_images": counter["images"],
        "vit_seconds": vit_seconds(counter),
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "seconds_max": max(times),
        "peak_rss_mib": peak_rss_mib(),
        "batch_size": seg.batch_size if args.method == "itaclip" else 1,
    }
    if args.device == "cuda":
        result["model_gpu_mib"] = model_gpu_mib
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    write_text(args.out, json.dumps(result), make_parents=True)


def _segments(query_class, num_classes):
    import torch

    counts = torch.bincount(query_class, minlength=num_classes)
    ends = counts.cumsum(0)
    return zip((ends - counts).tolist(), ends.tolist(), strict=True)


def case_name(method: str, image: int, stride: int) -> str:
    """File stem of one configuration's results in the temporary folder."""
    return f"{method}_{image}_{stride}"


def run_config(setup: dict, method: str, image: int, stride: int, args, tmp: Path) -> dict:
    out = tmp / f"{case_name(method, image, stride)}.json"
    command = [
        sys.executable, __file__, "--worker", "--method", method, "--stride", str(stride),
        "--model", setup["model"], "--image", str(image), "--crop", str(setup["crop"]),
        "--threads", str(args.threads), "--repeats", str(args.repeats),
        "--warmup", str(args.warmup), "--out", str(out),
        "--device", args.device, "--dtype", args.dtype,
    ]  # fmt: skip
    if args.batch_size is not None:
        command += ["--batch-size", str(args.batch_size)]
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def memory_column(device: str) -> tuple[str, str]:
    """(row key, label) of the peak memory a report shows for ``device``."""
    if device == "cuda":
        return "peak_gpu_mib", "peak GPU MiB"
    return "peak_rss_mib", "peak RSS MiB"


def markdown(report: dict) -> str:
    device = report["device"]
    key, label = memory_column(device)
    where = f"{report['device_name']} (CUDA {report['cuda']})" if device == "cuda" else "CPU"
    lines = [
        f"ITACLIP query logits + PAMR + class max, {report['setup']['model']} random weights, "
        f"ViT in {report['dtype']}, crop {report['setup']['crop']}, {NUM_CLASSES} classes / "
        f"{NUM_QUERIES} queries, {where}, {report['threads']} torch threads, {report['cpu']} "
        f"({report['physical_cores']} cores, load average {report['load_average'][0]:.1f} at "
        f"the end), torch {report['torch']}.",
        "",
        "| image | stride | method | ViT calls | ViT images | s/image (median) | min | max | ViT s "
        f"| {label} | speedup | max abs logit diff | max abs prob diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        baseline = row["method"] == "official"
        speedup = "1 (baseline)" if baseline else f"{row['speedup']:.2f}x"
        logit_diff = "-" if baseline else f"{row['max_abs_logit_diff']:.1e}"
        prob_diff = "-" if baseline else f"{row['max_abs_prob_diff']:.1e}"
        lines.append(
            f"| {row['image']} | {row['stride']} | {row['method']} | {row['vit_calls']} | "
            f"{row['vit_images']} | {row['seconds_median']:.2f} | {row['seconds_min']:.2f} | "
            f"{row['seconds_max']:.2f} | {row['vit_seconds']:.2f} | {row[key]:.0f} | "
            f"{speedup} | {logit_diff} | {prob_diff} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    from common_kernels.runtime.bench import figure

    key, label = memory_column(report["device"])
    cases = list(dict.fromkeys((row["image"], row["stride"]) for row in report["rows"]))
    with figure(path, 1, 2, figsize=(9, 3.5)) as (_, axes):
        for offset, method in enumerate(("official", "itaclip")):
            rows = {(r["image"], r["stride"]): r for r in report["rows"] if r["method"] == method}
            xs = [i + 0.4 * offset for i in range(len(cases))]
            axes[0].bar(xs, [rows[c]["seconds_median"] for c in cases], 0.4, label=method)
            axes[1].bar(xs, [rows[c][key] for c in cases], 0.4, label=method)
        for ax, title in zip(axes, ("seconds per image", label), strict=True):
            ax.set_xticks(
                [i + 0.2 for i in range(len(cases))], [f"{i} px, stride {s}" for i, s in cases]
            )
            ax.set_title(title)
            ax.legend()


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (the README's examples are checked against it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and image")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="itaclip ViT batch size (default: device's)"
    )
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="cuda: ViT-B/16 at 448 and 896 px, stride 28, on the GPU (--quick: the tiny ViT)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None,
        help="ViT autocast precision (default: fp16 on cuda, fp32 on cpu)",
    )  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=("official", "itaclip"), help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--crop", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.warmup is None:
        args.warmup = 0 if args.quick else 1
    from common_kernels.runtime.bench import check_run, default_dtype, machine, write_report

    args.dtype = args.dtype or default_dtype(args.device)
    if args.worker:
        worker(args)
        return
    check_run(parser, "itaclip", args.device, {"--results": args.results})
    import numpy as np

    setup = QUICK if args.quick else CUDA if args.device == "cuda" else FULL
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for image, stride in setup["cases"]:
            base = run_config(setup, "official", image, stride, args, tmp)
            ours = run_config(setup, "itaclip", image, stride, args, tmp)
            arrays = {
                kind: [
                    np.load(tmp / f"{case_name(m, image, stride)}.{kind}.npy")
                    for m in ("official", "itaclip")
                ]
                for kind in ("logits", "probs")
            }
            ours["speedup"] = base["seconds_median"] / ours["seconds_median"]
            ours["max_abs_logit_diff"] = float(np.abs(np.subtract(*arrays["logits"])).max())
            ours["max_abs_prob_diff"] = float(np.abs(np.subtract(*arrays["probs"])).max())
            rows += [base, ours]
    environment = machine(args.device, args.dtype, args.threads)
    report = {"setup": setup, "quick": args.quick, **environment, "rows": rows}
    name = "itaclip_bench" + ("_quick" if args.quick else "")
    name += "_cuda" if args.device == "cuda" else ""
    write_report(args.results / name, report, markdown(report))
    plot(report, args.results / f"{name}.png")


if __name__ == "__main__":
    main()
