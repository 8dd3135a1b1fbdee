"""benchmarks/cpu_speed.py and its siblings (cpu_speed_plan, _worker, _driver, _report): the
plan, the worker on a tiny configuration, ratios and tables.

The timed runs themselves are the benchmark's (minutes); here its pieces run on tiny inputs.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
from pathlib import Path

import pytest

from common_kernels.runtime.testing import load_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
REPOSITORY = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("keep_threads")  # the worker sets torch's thread count

cpu_speed = load_script(BENCHMARKS / "cpu_speed.py", "test_cpu_cpu_speed")
# the siblings it imported by name (it puts its folder on sys.path): the same module objects
speed_plan, speed_worker, speed_driver, speed_report = (
    importlib.import_module(f"cpu_speed_{part}") for part in ("plan", "worker", "driver", "report")
)


def test_the_plan_pairs_every_semanir_row_with_its_baseline_row() -> None:
    plan = speed_plan.preset(quick=True)
    plan = dataclasses.replace(plan, baseline="HEAD~1")
    specs = speed_plan.inference_specs(plan)
    semanir = [s for s in specs if s["variant"] == "semanir"]
    assert {s["code"] for s in semanir} == {"current", "HEAD~1"}
    assert len(semanir) == 2 * len({(s["model"], s["width"], s["threads"]) for s in semanir})
    assert {s["code"] for s in specs if s["variant"] != "semanir"} == {"current"}
    keys = [speed_plan.spec_key(s) for s in specs]
    assert len(keys) == len(set(keys))  # the code is part of a configuration's identity
    training = speed_plan.training_specs(plan)
    assert [s["code"] for s in training if s["config"] == "sr_x4_tiny"] == [
        "current", "HEAD~1", "current"]  # fmt: skip


def test_ratios_and_tables_give_the_baseline_and_the_loss_comparison() -> None:
    common = {"kind": "train", "config": "c", "channels": 1, "batch": 2, "patch": 8,
              "lq_patch": 8, "threads": 2, "seed": 0, "peak_rss_mib": 300.0}  # fmt: skip
    rows = [
        {**common, "variant": "semanir", "model": "m", "code": "current", "label": "m",
         "losses": [1.0, 0.5], **speed_report.summarize([1.0, 1.2], 1e-4, 10**9)},
        {**common, "variant": "semanir", "model": "m", "code": "abc", "label": "m (baseline abc)",
         "losses": [1.0, 0.501], **speed_report.summarize([2.0, 2.2], 1e-4, 10**9)},
        {**common, "variant": "dncnn", "model": "d", "code": "current", "label": "DnCNN",
         **speed_report.summarize([0.5, 0.5], 1e-4, 4 * 10**9)},
    ]  # fmt: skip
    speed_report.add_ratios(rows)
    assert rows[0]["x_baseline"] == pytest.approx(1.1 / 2.1)
    assert rows[0]["x_dncnn"] == pytest.approx(1.1 / 0.5)
    assert "x_baseline" not in rows[1]
    assert "x_baseline_rounds" not in rows[0]  # rows without their rounds: no per-round ratios
    table = speed_report.training_table(rows)
    assert "| 1.91 |  |" in table  # steps/s over the baseline's: 2.1 / 1.1
    losses = speed_report.loss_table(rows)
    assert "| c | 2 | 1.00000 | 0.50000 | 0.50100 | 1.00e-03 | 2.00e-03 |" in losses


def test_per_round_ratios_pair_the_rounds_both_rows_ran() -> None:
    """The machine slows down between rounds: the ratio of medians mixes rounds, the per-round
    ratios do not; a round one row lacks (its worker failed) is left out."""
    common = {"kind": "infer", "model": "m", "channels": 1, "width": 100, "height": 100,
              "threads": 2, "seed": 0, "input": "gray 100x100", "peak_rss_mib": 300.0,
              "twin_of": []}  # fmt: skip

    def row(variant: str, code: str, seconds: list[float], rounds: list[int]) -> dict:
        summary = speed_report.summarize(seconds, 0.01, None)
        return {**common, "variant": variant, "code": code, "label": f"{variant} {code}",
                "seconds": seconds, "round_index": rounds, **summary}  # fmt: skip

    rows = [
        row("semanir", "current", [1.0, 2.0, 2.2, 3.0], [0, 1, 2, 3]),
        row("semanir", "abc", [4.0, 8.0, 8.0, 12.0], [0, 1, 2, 3]),
        row("dncnn", "current", [2.0, 4.0, 4.0], [0, 1, 3]),
    ]
    speed_report.add_ratios(rows)
    current = rows[0]
    assert current["x_baseline"] == pytest.approx(2.1 / 8.0)  # the medians' ratio
    assert current["x_baseline_rounds"] == pytest.approx(
        {"median": 0.25, "min": 0.25, "max": 0.275})  # 1/4, 2/8, 2.2/8, 3/12  # fmt: skip
    assert current["x_dncnn_rounds"] == pytest.approx(
        {"median": 0.5, "min": 0.5, "max": 0.75})  # 1/2, 2/4, 3/4: round 2 left out  # fmt: skip
    assert "x_dncnn_rounds" not in rows[2]  # not against itself
    table = speed_report.inference_table(rows).splitlines()
    line = next(x for x in table if "| semanir current |" in x)
    assert line.endswith("| 0.50 (0.50-0.75) |  | 0.26 | 0.25 (0.25-0.28) |")
    train = [{**r, "kind": "train", "config": "c", "batch": 1, "lq_patch": 8} for r in rows]
    speed_report.add_ratios(train)
    line = speed_report.training_table(train).splitlines()[2]
    assert line.endswith("| 3.81 | 4.00 (3.64-4.00) |")  # speed-ups: 8 / 2.1, 1 / the ratios


def test_baseline_sources_are_extracted_once_from_git(tmp_path, monkeypatch) -> None:
    if not (REPOSITORY / ".git").exists():
        pytest.skip("not a git checkout")
    monkeypatch.setattr(speed_plan, "HERE", tmp_path)
    sources = speed_plan.baseline_sources("HEAD")
    assert [Path(s).relative_to(tmp_path).parts[2:] for s in sources] == [
        ("packages", "semanir", "src"), ("packages", "common-kernels", "src")]  # fmt: skip
    assert (Path(sources[0]) / "semanir" / "models" / "semanir.py").is_file()
    folder = Path(sources[0]).parents[2]
    (folder / "marker").write_text("kept")
    assert speed_plan.baseline_sources("HEAD") == sources  # extracted once
    assert (folder / "marker").is_file()
    with pytest.raises(subprocess.CalledProcessError):
        speed_plan.baseline_sources("no-such-revision")


def test_the_worker_times_counts_and_trains_a_configuration() -> None:
    spec = {"kind": "train", "config": "denoise_gray_tiny", "variant": "dncnn",
            "model": "dncnn_test_tiny", "channels": 1, "batch": 2, "patch": 8, "lq_patch": 8,
            "threads": 1, "seed": 0, "code": "current"}  # fmt: skip
    replies = []
    speed_worker.worker(spec, iter(["warmup", "run 0", "flops", "losses 3"]), replies.append)
    built, warm, timed, flops, losses = replies
    assert built["params"] > 0 and warm["seconds"] > 0 and timed["seconds"] > 0
    assert flops["flop"] > 0 and any("convolution" in op for op in flops["flop_by_op"])
    assert len(losses["losses"]) == 3 and all(v > 0 for v in losses["losses"])
    json.dumps(replies)  # what the parent reads, one line each


def test_a_training_round_times_steps_back_to_back_after_one_untimed(monkeypatch) -> None:
    """Round r runs steps 3r+1 .. 3r+3 (the same k draws for every code) and returns the mean
    time of the last two; the first, out of cache after other processes ran, is untimed."""
    clock = iter([10.0, 16.0])  # perf_counter around the two timed steps
    monkeypatch.setattr(speed_worker.time, "perf_counter", lambda: next(clock))
    ran = []
    assert speed_worker.steps_back_to_back(ran.append, 2) == 3.0
    assert ran == [7, 8, 9] and speed_worker.TRAIN_STEPS_PER_ROUND == 3


def test_the_flop_table_counts_the_cpp_attention_and_tolerates_an_older_baseline(
    monkeypatch,
) -> None:
    """With the C++ kernels: their forward, training forward and backward are counted as
    SDPA; a --baseline revision whose common_kernels predates them gets torch's table."""
    import sys

    import common_kernels
    from common_kernels import _cpu_kernels

    table = speed_worker.attention_flop_table()
    if _cpu_kernels.status()[0]:
        ops = _cpu_kernels.ops()
        assert table[ops.masked_attention] is speed_worker._cpu_flash_flop
        assert table[ops.masked_attention_lse] is speed_worker._cpu_flash_flop
        assert table[ops.masked_attention_backward] is speed_worker._cpu_flash_backward_flop
    monkeypatch.delattr(common_kernels, "_cpu_kernels")
    monkeypatch.setitem(sys.modules, "common_kernels._cpu_kernels", None)  # not importable
    assert speed_worker.attention_flop_table() == speed_worker.CPU_ATTENTION_FLOPS


def test_sizes_replace_the_denoisers_inputs_and_bad_ones_are_refused(capsys) -> None:
    args = cpu_speed.parse_args(["--quick", "--sizes", "384x384", "1024X768"])
    plan = speed_plan.preset(args.quick, args.threads, args.rounds, args.sizes)
    assert plan.sizes == ((384, 384), (1024, 768))
    specs = speed_plan.inference_specs(plan)
    gray = {(s["width"], s["height"]) for s in specs if s["channels"] == 1}
    assert gray == {(384, 384), (1024, 768)}
    for bad in ("384", "32x32", "axb"):
        with pytest.raises(SystemExit):
            cpu_speed.parse_args(["--sizes", bad])
        error = capsys.readouterr().err
        assert f"expected WIDTHxHEIGHT with both sides >= 64, got '{bad}'" in error


def test_train_configs_replace_the_presets_and_unknown_ones_are_refused(capsys) -> None:
    args = cpu_speed.parse_args(["--quick", "--train-configs", "sr_x4_tiny"])
    plan = speed_plan.preset(args.quick, train_configs=args.train_configs)
    assert plan.train_configs == ("sr_x4_tiny",)
    assert {s["config"] for s in speed_plan.training_specs(plan)} == {"sr_x4_tiny"}
    with pytest.raises(SystemExit):
        cpu_speed.parse_args(["--train-configs", "sr_x9"])
    assert "argument --train-configs: invalid choice: 'sr_x9'" in capsys.readouterr().err


def test_archs_time_registry_architectures_against_dncnn_instead_of_the_bundled(capsys) -> None:
    small, tiny = "semanir_small_denoise_gray", "semanir_tiny_denoise_gray"
    args = cpu_speed.parse_args(
        ["--archs", small, tiny, "--sizes", "384x384", "1024x1024", "--threads", "1"]
    )
    plan = speed_plan.preset(False, args.threads, args.rounds, args.sizes)
    plan = dataclasses.replace(plan, archs=tuple(args.archs))
    specs = speed_plan.inference_specs(plan)
    assert [(s["variant"], s["model"], s["width"]) for s in specs] == [
        (variant, model, size) for size in (384, 1024)
        for variant, model in (("arch", small), ("arch", tiny), ("dncnn", "dncnn_denoise_gray"))
    ]  # fmt: skip
    assert speed_report.label(specs[0]) == "semanir_small_denoise_gray (random weights)"
    model = speed_worker.inference_model(specs[0])
    assert model.config.embed_dim == 48 and not model.training
    with pytest.raises(SystemExit):
        cpu_speed.parse_args(["--archs", "semanir_huge"])
    assert "--archs: unknown architectures ['semanir_huge']" in capsys.readouterr().err


def test_loss_steps_need_a_baseline(capsys) -> None:
    with pytest.raises(SystemExit):
        cpu_speed.parse_args(["--loss-steps", "5"])
    assert "--loss-steps: must be >= 0 and needs --baseline, got 5" in capsys.readouterr().err


def test_modes_add_bf16_and_compiled_rows_of_both_codes_compared_mode_to_mode() -> None:
    plan = dataclasses.replace(
        speed_plan.preset(quick=True), baseline="HEAD~1", modes=("fp32", "bf16", "compiled")
    )
    specs = speed_plan.inference_specs(plan)
    modes = {(s["variant"], s["code"], s["mode"]) for s in specs}
    assert modes == {
        ("semanir", "current", "fp32"), ("semanir", "current", "bf16"),
        ("semanir", "current", "compiled"), ("semanir", "HEAD~1", "fp32"),
        ("semanir", "HEAD~1", "bf16"), ("semanir", "HEAD~1", "compiled"),
        ("dense", "current", "fp32"), ("dncnn", "current", "fp32"),
    }  # fmt: skip
    fp32 = next(s for s in specs if s["variant"] == "semanir" and s["mode"] == "fp32")
    assert "fp32" not in speed_plan.spec_key(fp32)  # keys of older journals still resume
    compiled = {**fp32, "mode": "compiled"}
    assert speed_report.label(compiled) == f"{fp32['model']}, compiled"
    old = {**compiled, "code": "HEAD~1"}
    assert speed_report.label(old) == f"{fp32['model']}, compiled (baseline HEAD~1)"
    assert speed_plan.flops_key(compiled) == speed_plan.flops_key(fp32)  # counted once, eagerly
    rows = [{**spec, "label": speed_report.label(spec), **speed_report.summarize([t], 1e-4, 10**9)}
            for spec, t in ((fp32, 1.0), ({**fp32, "code": "HEAD~1"}, 2.0), (compiled, 3.0),
                            (old, 4.0))]  # fmt: skip
    speed_report.add_ratios(rows)
    assert [r.get("x_baseline") for r in rows] == [0.5, None, 0.75, None]


def test_the_onnx_mode_adds_onnx_runtime_rows_on_the_same_inputs() -> None:
    plan = dataclasses.replace(speed_plan.preset(quick=True), modes=("fp32", "onnx"))
    specs = speed_plan.inference_specs(plan)
    semanir = [s for s in specs if s["variant"] == "semanir"]
    assert {s["mode"] for s in semanir} == {"fp32", "onnx"}
    inputs = {mode: {speed_plan.input_name(s) for s in semanir if s["mode"] == mode}
              for mode in ("fp32", "onnx")}  # fmt: skip
    assert inputs["onnx"] == inputs["fp32"]
    assert {s["mode"] for s in specs if s["variant"] != "semanir"} == {"fp32"}
    spec = {"kind": "infer", "variant": "dncnn", "model": "dncnn_test_tiny", "twin_of": [],
            "channels": 1, "width": 12, "height": 10, "threads": 1, "seed": 0,
            "code": "current", "mode": "onnx"}  # fmt: skip
    replies = []
    speed_worker.worker(spec, iter(["warmup", "run 0"]), replies.append)
    assert replies[0]["params"] > 0 and all(r["seconds"] > 0 for r in replies[1:])
    assert speed_report.label({**semanir[0], "mode": "onnx"}) == f"{semanir[0]['model']}, onnx"


def test_a_worker_that_dies_is_reported_with_its_last_error_line() -> None:
    spec = {"kind": "infer", "variant": "semanir", "model": "no_such_model", "twin_of": [],
            "channels": 1, "width": 8, "height": 8, "threads": 1, "seed": 0,
            "code": "current", "mode": "fp32"}  # fmt: skip
    worker = speed_driver.Worker(spec)
    with pytest.raises(speed_driver.WorkerFailed, match=r"exit 1: .*unknown model 'no_such_model'"):
        worker.read(timeout=120)


def test_a_loss_comparison_waits_in_proportion_to_its_steps(tmp_path) -> None:
    assert speed_driver.losses_timeout(200) == speed_driver.COMMAND_TIMEOUT_S + 200 * 30
    worker = speed_driver.Worker.__new__(speed_driver.Worker)  # a silent process in its place
    worker.spec, worker.stderr = {}, open(tmp_path / "stderr", "w+")  # noqa: SIM115
    worker.process = subprocess.Popen(
        ["sh", "-c", "cat > /dev/null"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    with pytest.raises(speed_driver.WorkerFailed, match=r"^no answer within 1 s$"):
        worker.ask("losses 3", timeout=1)
    assert worker.process.poll() == 0 and worker.stderr.closed  # closed after its silence
