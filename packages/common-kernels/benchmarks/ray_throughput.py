"""Images per second of a package's batch command, plain against ``--ray`` with 1 and 2 workers,
and the overhead Ray adds per image; run as a user runs the commands (each a process of its own,
on real photos, with the package's tiny model).

    python packages/common-kernels/benchmarks/ray_throughput.py --package semanir
    python packages/common-kernels/benchmarks/ray_throughput.py --package itaclip --sizes 16 48
    python packages/common-kernels/benchmarks/ray_throughput.py --package semanir --busy

For each batch size ``n`` (BSDS500 colour photos, 481x321, from ``../shared/data/bsds400``) the
command runs plain (torch's threads, and 1 thread: a 1-CPU actor's), then with
``--ray ADDRESS --ray-workers W`` for W = 1 and 2 against a local
Ray cluster this script starts once (``num_cpus=2``; its start is timed apart, as a cluster is up
before a job). Wall time per run includes the process start and model load, the same for every
mode; the per-image time is the slope of wall time over two batch sizes and the fixed cost its
intercept, so Ray's overhead per image is the slope of one worker minus the plain command's on
one thread. Each package's
results go to ``packages/<package>/benchmarks/results/ray_throughput.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common_kernels.runtime.bench import figure, machine, write_drawn_report

HERE = Path(__file__).resolve().parent
PACKAGES = HERE.parents[1]
DATA = Path(os.environ.get("SHARED_DATA", PACKAGES.parents[1] / "shared" / "data"))
SCRIPTS = Path(sys.executable).parent


def setup(package: str, work: Path) -> list[str]:
    """Write the package's tiny model if it needs one; the command's options after the inputs."""
    if package == "semanir":
        return ["--model", "semanir_tiny_denoise_color"]
    if package == "itaclip":
        run([str(SCRIPTS / "itaclip"), "tiny-model", str(work / "clip")])
        return ["--classes", "sky,tree,person,building,water", "--model",
                f"local-dir:{work / 'clip'}", "--pretrained", "", "--stride", "224"]  # fmt: skip
    run([str(SCRIPTS / "diffeat"), "tiny-model", str(work / "sd15"), "--kind", "sd15"])
    return ["--model", str(work / "sd15"), "--layers", "mid-vit-block0-out", "--image-size",
            "128"]  # fmt: skip


COMMANDS = {"semanir": ["restore"], "itaclip": ["segment"], "diffeat": ["extract"]}
# (mode, extra flags, OpenMP threads): a Ray actor of 1 CPU runs 1 thread, so the plain command
# on 1 thread is the baseline of Ray's overhead, and on both cores that of the speed-up
MODES = (("plain", [], None), ("plain, 1 thread", [], 1),
         ("ray, 1 worker", ["--ray-workers", "1"], None),
         ("ray, 2 workers", ["--ray-workers", "2"], None))  # fmt: skip


def output_of(package: str, folder: Path) -> Path:
    """diffeat writes a features file; the others a folder."""
    return folder / "f.safetensors" if package == "diffeat" else folder


def run(argv: list[str], threads: int | None = None) -> float:
    """Wall seconds of one command (``threads``: its OpenMP threads, else torch's default); its
    failure stops the benchmark with its output."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return seconds


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (slope s/image, intercept s) of wall time over batch size."""
    count = len(points)
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum(
        (x - mean_x) ** 2 for x, _ in points
    )
    return slope, mean_y - slope * mean_x


def measure(package: str, sizes: list[int], address: str, work: Path) -> list[dict]:
    options = setup(package, work)
    photos = sorted((DATA / "bsds400").glob("*.jpg"))
    rows = []
    for size in sizes:
        inputs = work / f"in{size}"
        inputs.mkdir()
        for photo in photos[:size]:
            (inputs / photo.name).symlink_to(photo)
        for mode, extra, threads in MODES:
            if mode.startswith("ray"):
                extra = ["--ray", address, "--ray-batch", "4", *extra]
            out = output_of(package, work / f"out-{size}-{len(rows)}")
            argv = [str(SCRIPTS / package), *COMMANDS[package], str(inputs), "-o", str(out),
                    *options, *extra]  # fmt: skip
            seconds = run(argv, threads)
            rows.append({"mode": mode, "images": size, "seconds": seconds,
                         "images_per_s": size / seconds})  # fmt: skip
            print(
                f"{package} {mode:15} {size:3} images: {seconds:6.1f} s, "
                f"{size / seconds:5.2f} images/s",
                flush=True,
            )
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    modes = list(dict.fromkeys(row["mode"] for row in rows))
    fits = {}
    for mode in modes:
        slope, intercept = fit([(r["images"], r["seconds"]) for r in rows if r["mode"] == mode])
        fits[mode] = {"mode": mode, "s_per_image": slope, "fixed_s": intercept,
                      "images_per_s_steady": 1 / slope if slope > 0 else None}  # fmt: skip
    plain, single = fits["plain"]["s_per_image"], fits["plain, 1 thread"]["s_per_image"]
    for item in fits.values():
        item["speed_x_plain"] = plain / item["s_per_image"] if item["s_per_image"] > 0 else None
    # Ray's own cost per image: one 1-CPU actor against the plain command on one thread
    fits["ray, 1 worker"]["overhead_s_per_image"] = fits["ray, 1 worker"]["s_per_image"] - single
    return list(fits.values())


def number(value: float | None) -> str:
    """Two decimals, or a dash where the slope gave no rate (a per-image time within noise)."""
    return "-" if value is None else f"{value:.2f}"


def markdown(report: dict) -> str:
    runs = [f"| {r['mode']} | {r['images']} | {r['seconds']:.1f} | {r['images_per_s']:.2f} |"
            for r in report["runs"]]  # fmt: skip
    fits = [f"| {f['mode']} | {f['s_per_image']:.3f} | {f['fixed_s']:.1f} | "
            f"{number(f['images_per_s_steady'])} | {number(f['speed_x_plain'])} |"
            for f in report["fits"]]  # fmt: skip
    beside = (
        "; a busy single-threaded process beside every run" if report.get("busy_process") else ""
    )
    overhead = next(f["overhead_s_per_image"] for f in report["fits"]
                    if "overhead_s_per_image" in f)  # fmt: skip
    lines = [
        f"{report['package']} on {report['machine']['cpu']} ({report['machine']['threads']} "
        f"threads), a local Ray cluster of 2 CPUs (started in {report['cluster_start_s']:.1f} s, "
        f"before the jobs); BSDS500 photos, 481x321; each run a process of its own{beside}.",
        "",
        "| mode | images | wall s | images/s |",
        "|---|---:|---:|---:|",
        *runs,
        "",
        "| mode | s per image (slope) | fixed s (intercept) | steady images/s | x plain |",
        "|---|---:|---:|---:|---:|",
        *fits,
        "",
        "Ray's overhead per image (1 worker against the plain command on 1 thread): "
        f"{overhead:+.3f} s.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    with figure(path, figsize=(6, 4)) as (_, axes):
        for mode in dict.fromkeys(r["mode"] for r in report["runs"]):
            points = [(r["images"], r["seconds"]) for r in report["runs"] if r["mode"] == mode]
            axes.plot(*zip(*points, strict=True), marker="o", label=mode)
        axes.set_xlabel("images")
        axes.set_ylabel("wall seconds (process start included)")
        axes.set_title(f"{report['package']}: plain vs --ray")
        axes.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", choices=sorted(COMMANDS), required=True)
    parser.add_argument("--sizes", type=int, nargs=2, default=[8, 24],
                        help="two batch sizes, each in [1, 400] (default: 8 24)")  # fmt: skip
    parser.add_argument("--busy", action="store_true",
                        help="a busy single-threaded process beside every run (a shared "
                        "machine); writes ray_throughput_busy.*")  # fmt: skip
    args = parser.parse_args()
    if not all(1 <= size <= 400 for size in args.sizes) or args.sizes[0] == args.sizes[1]:
        parser.error(f"--sizes must be two different ints in [1, 400], got {args.sizes}")
    import ray
    import torch

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cluster_start = time.perf_counter() - start
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        with tempfile.TemporaryDirectory() as folder:
            address = ray.get_runtime_context().gcs_address
            rows = measure(args.package, args.sizes, address, Path(folder))
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        ray.shutdown()
    report = {"package": args.package, "sizes": args.sizes, "cluster_start_s": cluster_start,
              "busy_process": args.busy, "runs": rows, "fits": summarise(rows),
              "machine": machine("cpu", "fp32", torch.get_num_threads())}  # fmt: skip
    name = "ray_throughput_busy" if args.busy else "ray_throughput"
    stem = PACKAGES / args.package / "benchmarks" / "results" / name
    print(write_drawn_report(stem, report, markdown, plot))


if __name__ == "__main__":
    main()
