"""benchmarks/run.py and worker.py on tiny configurations: grids, measuring, policy, report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from common_kernels import _policy
from common_kernels.runtime.testing import hidden_modules, no_work, refusal

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import run  # noqa: E402
import worker  # noqa: E402


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def spec(**changes) -> dict:
    base = {
        "op": "attention", "grid": "windowed", "backend": "mask", "mode": "fwd+bwd",
        "dtype": "float32", "batch": 3, "heads": 2, "n": 16, "d": 8, "k": 4, "bias": True,
        "index": "dictionary", "device": "cpu", "threads": 1, "repeats": 2, "budget_s": 1.0,
    }  # fmt: skip
    return {**base, **changes}


def test_cpu_grids_skip_triton_and_forward_only_backwards_and_cuda_adds_triton() -> None:
    cpu = run.grid_specs("cpu", quick=False, threads=1) + run.windowed_specs("cpu", False, 1)
    assert {s["backend"] for s in cpu if s["mode"] == "fwd"} == {
        "reference",
        "mask",
        "gather",
        "flex",
        "cpp",
        "dense",
    }
    assert {s["backend"] for s in cpu if s["mode"] == "fwd+bwd"} == {
        "reference",
        "mask",
        "gather",
        "cpp",  # 0.4.5: the C++ kernel trains (FlexAttention still has no CPU backward)
        "dense",
    }
    assert {s["dtype"] for s in cpu} == {"float32"}
    cuda = run.grid_specs("cuda", quick=False, threads=1)
    assert {s["backend"] for s in cuda} == {*run.KNN_BACKENDS, "dense"} - {"cpp"}
    assert {s["dtype"] for s in cuda} == {"float16", "bfloat16"}
    assert all(s["bias"] for s in run.windowed_specs("cuda", False, 1))
    assert run.dispatch_specs("cpu", False, 1) == []
    assert {s["index"] for s in run.dispatch_specs("cuda", False, 1)} == {"dictionary", "tensor"}


def test_the_cpp_backward_is_skipped_past_its_scratch_limit_with_the_reason() -> None:
    point = spec(grid="grid", batch=1, heads=2, n=4096, d=32, k=16, device="cpu",
                 dtype="float32", backend="cpp", mode="fwd+bwd")  # fmt: skip
    assert run.run_worker(point)["error"] == "skipped: the C++ backward takes N <= 1024"


def test_too_big_skips_n_squared_backends_only() -> None:
    huge = spec(grid="grid", batch=1, heads=4, n=65536, d=32, k=16, device="cuda",
                dtype="float16")  # fmt: skip
    assert run.too_big({**huge, "backend": "mask"}) and run.too_big(
        {**huge, "backend": "reference"}
    )
    assert not run.too_big({**huge, "backend": "triton"})
    result = run.run_worker({**huge, "backend": "mask"})
    assert result["error"].startswith("skipped: one N x N tensor per head is 32 GiB")


def test_neighbour_generators_give_distinct_in_range_ids() -> None:
    idx = worker.distinct_neighbours(2, 40, 7, torch.device("cpu"))
    assert idx.shape == (2, 40, 7)
    assert all(len(set(row.tolist())) == 7 for row in idx.view(-1, 7))
    semantic = worker.semantic_neighbours(3, 16, 4, torch.device("cpu"))
    assert semantic.shape == (3, 16, 4) and int(semantic.max()) < 16


@pytest.mark.parametrize("backend", ["mask", "gather", "dense"])
def test_worker_measures_time_and_memory(backend) -> None:
    result = worker.measure_cpu(spec(backend=backend))
    assert result["median_ms"] > 0 and result["min_ms"] <= result["median_ms"] <= result["max_ms"]
    assert result["runs"] >= 2 and result["peak_mib"] >= 0


def fake_results() -> list[dict]:
    rows = []
    for backend, ms in (("reference", 3.0), ("mask", 2.0), ("gather", 5.0), ("dense", 1.5)):
        rows.append({**spec(backend=backend), "median_ms": ms, "min_ms": ms, "max_ms": ms,
                     "runs": 2, "peak_mib": 1.0})  # fmt: skip
    rows.append({**spec(backend="flex"), "error": "exit 1: RuntimeError: no backward"})
    return rows


def test_policy_table_and_auto_check_from_results() -> None:
    results = fake_results()
    env = run.environment("cpu", 1)
    table = run.policy_table(results, env, "python benchmarks/run.py")
    assert table["device"] == "cpu" and len(table["points"]) == 1
    point = table["points"][0]
    assert point["ms"] == {"reference": 3.0, "mask": 2.0, "gather": 5.0}  # no dense, no errors
    assert (point["n"], point["k"], point["batch_heads"], point["bias"]) == (16, 4, 6, True)
    run.add_ratios(results, table)
    by_backend = {r["backend"]: r for r in results}
    assert by_backend["mask"]["auto_pick"] == "mask" and by_backend["mask"]["auto_ok"]
    assert by_backend["gather"]["vs_fastest"] == pytest.approx(2.5)
    text = run.report(results, env)
    assert "| fwd+bwd | float32 | 3 x 2 | 16 | 4 |" in text
    assert "| mask | 1.33 | mask (1.00) |" in text  # fastest, x dense, auto's pick


def test_between_points_stay_out_of_the_policy_and_allow_one_and_a_half_times() -> None:
    assert run.between_specs("cuda", False, 1) == []
    specs = run.between_specs("cpu", False, 1)
    assert {s["grid"] for s in specs} == {"between"} and {s["bias"] for s in specs} == {False, True}
    assert len(run.between_specs("cpu", True, 1)) < len(specs)
    table_rows = fake_results()
    between = [{**r, "grid": "between", "n": 32} for r in fake_results()]
    for r in between:  # gather 1.4x the fastest: a miss at a table point, fine between them
        r["median_ms"] = {"reference": 6.0, "mask": 5.0, "gather": 7.0}.get(
            r["backend"], r.get("median_ms")
        )
    env = run.environment("cpu", 1)
    table = run.policy_table(table_rows + between, env, "cmd")
    assert [point["n"] for point in table["points"]] == [16]  # the between rows are left out
    table["points"][0]["ms"] = {"gather": 1.0, "mask": 2.0}  # the table now says gather
    run.add_ratios(between, table)
    gather = next(r for r in between if r["backend"] == "gather")
    assert gather["auto_pick"] == "gather" and gather["auto_ok"]  # 1.4 <= 1.5
    text = run.report(between, env)
    assert "between the policy table's points" in text
    assert "| fwd+bwd + bias | float32 | 3 x 2 | 32 | 4 |" in text
    assert "gather (1.40) |" in text


def test_from_results_rerenders_and_writes_a_policy(tmp_path, monkeypatch) -> None:
    saved = {"environment": run.environment("cpu", 1), "command": "cmd", "results": fake_results()}
    path = tmp_path / "full.json"
    path.write_text(json.dumps(saved))
    monkeypatch.setattr(run, "POLICY_DIR", tmp_path / "policies")
    assert run.main(["--from-results", str(path), "--write-policy", "--out", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "policies" / "cpu.json").read_text())
    assert _policy.choose(table, _policy.Problem(16, 4, 6, "fwd+bwd", True, "float32"),
                          {"mask", "gather"}) == "mask"  # fmt: skip
    assert (tmp_path / "full.md").is_file() and (tmp_path / "full.png").stat().st_size > 0


def test_graph_table_gives_replay_time_over_dense() -> None:
    results = fake_results()
    graph = {"mask": 1.0, "gather": 3.0, "dense": 0.5}  # reference could not be captured
    for r in results:
        if r["backend"] in graph:
            r["graph_ms"] = graph[r["backend"]]
    table = run.graph_table(results, "windowed")
    assert table.splitlines()[0] == (
        "| mode | dtype | B x heads | N | K | dense ms | reference | mask | gather | flex |"
    )
    assert (
        table.splitlines()[2]
        == "| fwd+bwd | float32 | 3 x 2 | 16 | 4 | 0.5 | - | 2.00 | 6.00 | - |"
    )
    assert run.graph_table(fake_results(), "windowed") == ""  # CPU runs have no graph times
    assert "replayed as CUDA graphs" in run.report(results, run.environment("cpu", 1))


def test_cpu_grids_leave_out_the_interpreted_backends() -> None:
    cpu = run.grid_specs("cpu", quick=True, threads=1) + run.windowed_specs("cpu", True, 1)
    assert not {s["backend"] for s in cpu} & set(run.INTERPRETED_ON_CPU)
    quick_cuda = run.windowed_specs("cuda", quick=True, threads=1)
    assert sorted({s["n"] for s in quick_cuda}) == [64, 256, 1024]  # one point per model size
    assert "tiles" in {s["backend"] for s in quick_cuda}


def test_main_checks_its_setup_before_any_work(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(run, "run_all", no_work)
    monkeypatch.setattr(run, "environment", no_work)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    monkeypatch.setattr(run, "POLICY_DIR", blocker / "policies")
    err = refusal(run.main, ["--quick", "--out", str(blocker)])
    assert err == f"run.py: error: --out {blocker} is a file, not a folder\n"
    err = refusal(run.main, ["--quick", "--write-policy", "--out", str(tmp_path / "out")])
    message = f"--write-policy {blocker}/policies: cannot create it, {blocker} is a file"
    assert err == f"run.py: error: {message}\n"
    with hidden_modules("matplotlib"):
        err = refusal(run.main, ["--quick", "--out", str(tmp_path / "out")])
    assert err == (
        "run.py: error: module matplotlib is not installed; install the [bench] extra: "
        'pip install "common-kernels[bench]" '
        '(from a clone: pip install "./packages/common-kernels[bench]")\n'
    )
    assert list(tmp_path.iterdir()) == [blocker] and blocker.read_text() == "x"


def test_ray_throughput_fits_slopes_and_takes_the_overhead_against_one_thread(monkeypatch):
    import ray_throughput

    runs = []
    for mode, (slope, fixed) in {"plain": (0.5, 2.0), "plain, 1 thread": (0.8, 2.0),
                                 "ray, 1 worker": (0.9, 12.0),
                                 "ray, 2 workers": (-0.01, 14.0)}.items():  # fmt: skip
        runs += [{"mode": mode, "images": n, "seconds": fixed + slope * n,
                  "images_per_s": n / (fixed + slope * n)} for n in (8, 24)]  # fmt: skip
    fits = {f["mode"]: f for f in ray_throughput.summarise(runs)}
    assert fits["plain"]["s_per_image"] == pytest.approx(0.5)
    assert fits["ray, 1 worker"]["fixed_s"] == pytest.approx(12.0)
    # Ray's own cost: one 1-CPU actor against the plain command on one thread, not on two
    assert fits["ray, 1 worker"]["overhead_s_per_image"] == pytest.approx(0.1)
    assert fits["plain, 1 thread"]["speed_x_plain"] == pytest.approx(0.625)
    assert fits["ray, 2 workers"]["images_per_s_steady"] is None  # a slope within noise
    report = {"package": "semanir", "cluster_start_s": 4.0, "runs": runs,
              "fits": list(fits.values()), "machine": {"cpu": "CPU", "threads": 2}}  # fmt: skip
    table = ray_throughput.markdown(report)
    assert "| ray, 2 workers | -0.010 | 14.0 | - | - |" in table
    assert table.endswith("(1 worker against the plain command on 1 thread): +0.100 s.\n")
    assert "beside every run" not in table
    busy = ray_throughput.markdown({**report, "busy_process": True})
    assert "each run a process of its own; a busy single-threaded process beside every run." in busy
    monkeypatch.setattr(ray_throughput, "measure", no_work)
    err = refusal(
        ray_throughput.main, ["--package", "semanir", "--sizes", "8", "8"], prog="ray_throughput.py"
    )
    assert err.endswith("error: --sizes must be two different ints in [1, 400], got [8, 8]\n")
