"""SemanIR's speed on the CPU: every bundled model and its dense twin against a DnCNN.

    python packages/semanir/benchmarks/cpu_speed.py [--quick] [--out DIR] [--threads N ...]
        [--rounds N] [--sizes WxH ...] [--baseline GIT_REF] [--loss-steps N]
        [--modes fp32 bf16 compiled onnx]

Inference: every bundled model (``semanir models``; ``semanir.load_model(name)``), its
dense-window twin (the same config with ``dictionary="dense"``, random weights: time does not
depend on weight values; one twin serves every bundled model of the same config) and a DnCNN of
the published size (``semanir.build_model("dncnn_denoise_gray")``: 17 layers, 64 features; the
colour DnCNN for RGB inputs; random weights) restore the same random input through the public
API, ``semanir.restore(model, x, tile=None)`` (fp32, batch 1): gray 256x256, 384x384, 481x321
and 1024x1024 for the gray models (``--sizes`` replaces them), the same sizes in RGB for the
colour denoiser, a 128x128 RGB input for the x4 super-resolution model (DnCNN restores that
same input). Sizes are width x height.

Training: one optimizer step of each shipped tiny training config
(``src/semanir/configs/*_tiny*.yaml``) built as ``semanir fit`` builds it (the config's model
section gives ``RestorationModule`` its model, loss, AdamW and schedule; the data section its
batch and patch size), on random batches, with the dictionary size that ``RestorationModule``
draws at that step; beside it the same step of a DnCNN (the colour one for RGB configs) on the
same low-quality batch (for x4 SR: the 1/4-size patches the model takes), whose time makes the
ratio. The data pipeline and callbacks (EMA) are left out. A training worker sets its process
up as that code's ``semanir fit`` does: from 0.4.6 on, :func:`semanir.allocator.keep_freed_memory`
(glibc keeps freed blocks: no page faults for each step's activations); a baseline revision
without that module runs glibc's defaults, as its ``semanir fit`` did.

``--modes``: how SemanIR's rows run besides fp32 eager (the default; with ``--baseline`` the
baseline code's rows run in each mode too, and "x baseline" compares a mode with itself):
``bf16`` (``restore(..., dtype=torch.bfloat16)``: autocast; AMX/AVX-512-BF16 CPUs run its
matmuls and convolutions in bf16), ``compiled`` (``restore(..., compile=True)``: inductor;
the warm-up call on the whole input compiles, its time is the "compile s" column) and ``onnx``
(the model exported by ``semanir.export_onnx`` once, outside the timing, and run by ONNX
Runtime's CPU provider with the row's thread count on the same input).

``--baseline REF``: SemanIR's rows are measured twice in the same rounds, with this checkout's
code and with the semanir and common-kernels sources of the git revision REF (extracted with
``git archive`` and put first on the worker's ``PYTHONPATH``): "x baseline" is the time over
that revision's. ``--loss-steps N`` also trains each tiny config N steps from the same seed with
both codes and compares the losses (the same step function, on the same random batches).

Every configuration (model, input, threads, code) runs in its own process (``--worker``), so
its peak RSS (``ru_maxrss``) is its own. The processes of one input (both thread counts) start
together and are warmed up (one call; for inputs above 0.25 MP on a 256x256 crop of the input), then
measured in interleaved rounds: each round times one call of every configuration in turn (the
order rotates each round), so machine noise hits all alike; tables give the median and min-max
of the rounds. A training round runs three optimizer steps back to back and times the last
two (their mean), as a training loop runs them: the first step of a round finds the process's
memory out of cache after the other configurations' rounds (0.4.7 and earlier timed that one
step alone).
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (one count per model and input,
after the rounds; the CPU flash-attention op that torch's table lacks, and
common-kernels' C++ attention, are counted with the SDPA formula), giving GFLOP per megapixel
of the input and achieved GFLOP/s (GFLOP/MP divided by seconds per MP). "x DnCNN" is the time
per megapixel over that of the DnCNN measured in the same rounds (same input and threads).

Full run: threads 1 and 2, 3 rounds (training: 2 threads, 3 rounds). ``--quick``: 2 threads,
the 256x256 inputs and the SR input, 2 rounds, the training steps of the three distinct
architectures at one config each.

Writes ``<out>/cpu_speed.json`` (``cpu_speed_quick.json`` for ``--quick``; raw rounds,
environment, machine load), ``.md`` (tables) and ``.png`` (drawn from the JSON), atomically.
Every finished round is journaled in ``<out>/<stem>.partial.jsonl``; a run cut short resumes
from it (configurations left unfinished restart in a fresh process, with a warm-up, and measure
only their missing rounds); the journal is removed once the report is written.

The code: this file (the command line), ``cpu_speed_plan.py`` (the configurations),
``cpu_speed_worker.py`` (one configuration in its own process), ``cpu_speed_driver.py`` (the
processes, interleaved rounds and the journal) and ``cpu_speed_report.py`` (rows, ratios, tables
and plot).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported by path (the tests): the siblings import by name
    sys.path.append(str(HERE))

from cpu_speed_driver import Journal, measure_group  # noqa: E402
from cpu_speed_plan import (  # noqa: E402
    MODES,
    QUICK_TRAIN_CONFIGS,
    TRAIN_CONFIGS,
    baseline_sources,
    groups,
    inference_specs,
    preset,
    training_specs,
)
from cpu_speed_report import build_report, write_report  # noqa: E402
from cpu_speed_worker import worker_main  # noqa: E402

MIN_SIZE = 64  # --sizes: the smallest side (a U-Net input is padded to multiples of 32)


def parse_size(text: str) -> tuple[int, int]:
    """'384x384' -> (384, 384), (width, height); argparse's type for --sizes."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or min(int(width), int(height)) < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT with both sides >= {MIN_SIZE}, got {text!r}"
        )
    return int(width), int(height)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (``argv``: None reads sys.argv)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the preset of a few minutes")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch thread counts (default: 1 2; --quick: 2)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds per configuration (default: 3; --quick: 2)")  # fmt: skip
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=None, metavar="WxH",
                        help="the denoisers' inputs (default: 256x256 384x384 481x321 "
                        "1024x1024; --quick: 256x256)")  # fmt: skip
    parser.add_argument("--train-configs", nargs="+", choices=TRAIN_CONFIGS, default=None,
                        metavar="CONFIG", help="the training configs to step (default: all; "
                        f"--quick: {', '.join(QUICK_TRAIN_CONFIGS)})")  # fmt: skip
    parser.add_argument("--baseline", default=None, metavar="GIT_REF",
                        help="also time SemanIR with the code of this git revision")  # fmt: skip
    parser.add_argument("--loss-steps", type=int, default=0, metavar="N",
                        help="with --baseline: compare N training steps' losses")  # fmt: skip
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["fp32"],
                        help="how SemanIR runs: fp32 eager, bf16 autocast, compiled, "
                        "ONNX Runtime")  # fmt: skip
    parser.add_argument("--archs", nargs="+", default=None, metavar="ARCH",
                        help="time these registry architectures (random weights) against "
                        "DnCNN instead of the bundled models (no training steps unless "
                        "--train-configs)")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds: must be >= 1, got {args.rounds}")
    if args.threads is not None and min(args.threads) < 1:
        parser.error(f"--threads: must be >= 1, got {min(args.threads)}")
    if args.archs:
        from semanir.models import CONFIGS

        unknown = sorted(set(args.archs) - set(CONFIGS))
        if unknown:
            parser.error(f"--archs: unknown architectures {unknown}; known: {sorted(CONFIGS)}")
    if args.loss_steps < 0 or (args.loss_steps and args.baseline is None):
        parser.error(f"--loss-steps: must be >= 0 and needs --baseline, got {args.loss_steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure every configuration (resuming from the journal), write and print the report."""
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    from common_kernels.runtime.cli import check_benchmark_setup  # the parent's, as above

    check_benchmark_setup("cpu_speed.py", "semanir", modules=("matplotlib",),
                          folders={"--out": args.out})  # fmt: skip
    plan = preset(args.quick, args.threads, args.rounds, args.sizes, args.train_configs)
    if args.baseline is not None:
        try:
            baseline_sources(args.baseline)  # before any measurement: a bad revision fails now
        except subprocess.CalledProcessError as error:
            why = error.stderr.strip() if error.stderr else error
            sys.exit(f"cpu_speed.py: error: --baseline {args.baseline}: not a revision ({why})")
        plan = dataclasses.replace(plan, baseline=args.baseline, loss_steps=args.loss_steps)
    plan = dataclasses.replace(plan, modes=tuple(dict.fromkeys(args.modes)),
                               archs=tuple(dict.fromkeys(args.archs or ())))  # fmt: skip
    if args.archs and not args.train_configs:  # a restore-size run: training steps on request
        plan = dataclasses.replace(plan, train_configs=())
    stem = "cpu_speed_quick" if args.quick else "cpu_speed"
    journal = Journal(args.out / f"{stem}.partial.jsonl")
    inference, training = inference_specs(plan), training_specs(plan)
    todo = groups(inference) + groups(training)
    total = len(inference) * plan.rounds + len(training) * plan.train_rounds
    done = sum(1 for r in journal.records if r["record"] == "round")
    start = time.perf_counter()
    with tqdm(total=total, initial=min(done, total), desc="cpu_speed", unit="call",
              disable=None) as bar:  # fmt: skip
        for group in todo:
            rounds = plan.rounds if group[0]["kind"] == "infer" else plan.train_rounds
            measure_group(group, rounds, journal, bar, plan.loss_steps)
    report = build_report(plan, args.quick, journal, time.perf_counter() - start)
    text = write_report(report, args.out, stem)
    journal.path.unlink(missing_ok=True)
    print(text)
    print(f"wrote {args.out / stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
