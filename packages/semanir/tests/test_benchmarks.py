"""benchmarks/run.py, worker.py and eval_set12.py on tiny models, images and sizes."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image

from common_kernels.runtime.testing import hidden_modules, no_work, refusal
from common_kernels.runtime.testing import load_script as load_path
from semanir.data.degradations import add_gaussian_noise
from semanir.inference import load_model, restore
from semanir.io import read_image, write_image
from semanir.metrics import psnr, ssim
from semanir.models import build_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = "semanir_test_tiny_unet"


def load_script(name: str) -> ModuleType:
    """Import benchmarks/<name>.py by path."""
    return load_path(BENCHMARKS / f"{name}.py", f"test_bench_{name}")


run = load_script("run")
worker = load_script("worker")
eval_set12 = load_script("eval_set12")
runtimes = load_script("runtimes")

pytestmark = pytest.mark.usefixtures("keep_threads")  # the worker sets torch's thread count


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A save_pretrained folder of a random-init tiny gray U-net."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    build_model(TINY).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two smooth mid-gray 128x128 PNGs in <root>/set12 (values in [0.3, 0.7]: no clipping)."""
    root = tmp_path_factory.mktemp("data")
    ramp = torch.linspace(0.3, 0.7, 128)
    images = (ramp.view(1, 128, 1), ramp.view(1, 1, 128))  # vertical and horizontal ramps
    for index, image in enumerate(images):
        write_image(root / "set12" / f"{index + 1:02d}.png", image.expand(1, 128, 128))
    return root


def tiny_spec(dictionary: str, k: int | None, size: int = 16, group: str = "throughput") -> dict:
    spec = run.make_spec({}, dictionary, k, size, threads=1, quick=True, group=group, config=TINY)
    return {**spec, "budget_s": 5.0}


def test_worker_returns_positive_timings_and_memory():
    semanir, dense = worker.measure(tiny_spec("stage", 4)), worker.measure(tiny_spec("dense", None))
    for result in (semanir, dense):
        assert {"median_ms", "min_ms", "max_ms", "runs", "mpix_per_s", "peak_rss_mib"} <= set(
            result
        )
        assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
        assert result["runs"] == 3 and result["window"] == 4
        assert result["mpix_per_s"] == pytest.approx(16**2 / 1e6 / (result["median_ms"] / 1e3))
        assert result["peak_rss_mib"] > 0 and result["peak_growth_mib"] >= 0
    assert semanir["params"] == dense["params"]  # equal width and depth


def test_grids_cover_the_requested_k_and_sizes():
    full = run.throughput_specs(quick=False, threads=2)
    assert {s["size"] for s in full} == {128, 256, 512, 1024}
    assert {s["k"] for s in full if s["dictionary"] == "stage"} == {16, 32, 64, 128}
    assert all(s["overrides"] == run.WINDOW16 for s in full if s["k"] == 128)
    quick = run.throughput_specs(quick=True, threads=2)
    assert {s["size"] for s in quick} == {128, 256}
    assert {s["k"] for s in quick} == {None, 16, 32}


def test_run_all_measures_each_spec_once_and_resumes(tmp_path, monkeypatch):
    calls = []

    def fake_worker(spec: dict) -> dict:
        calls.append(spec)
        return {**spec, "median_ms": 1.0}

    monkeypatch.setattr(run, "run_worker", fake_worker)
    specs = [tiny_spec("stage", 4), tiny_spec("dense", None), tiny_spec("stage", 4)]
    journal = tmp_path / "quick.partial.jsonl"
    first = run.run_all(specs, journal)
    assert len(calls) == 2 and first[0] == first[2]
    assert run.run_all(specs, journal) == first and len(calls) == 2


def test_ablation_models_share_weights(tiny_dir):
    models = run.ablation_models(tiny_dir)
    assert [m.config.dictionary for m in models.values()] == ["stage", "layer"]
    stage, layer = (m.state_dict() for m in models.values())
    assert all(torch.equal(stage[name], layer[name]) for name in stage)


def test_report_round_trips_through_json_markdown_and_png(tmp_path, tiny_dir, data_root):
    throughput = [worker.measure(tiny_spec(d, k)) for d, k in (("dense", None), ("stage", 4))]
    run.add_ratios(throughput)
    ablation_runs = [worker.measure(tiny_spec(d, 4, group="ablation")) for d in ("stage", "layer")]
    paths = eval_set12.set12_paths(data_root)
    result = run.dictionary_psnr(run.ablation_models(tiny_dir), paths, 25.0, 0)
    result.update(sigma=25.0, k=8, trained=True, weights=f"trained weights from {tiny_dir}")
    report = {
        "environment": {**eval_set12.environment(), "threads": 1},
        "quick": True,
        "model": TINY,
        "notes": list(run.NOTES),
        "throughput": throughput,
        "ablation": {
            "k": 4,
            "timing": run.ablation_timing(ablation_runs),
            "runs": ablation_runs,
            "psnr": result,
        },
    }
    tables = run.write_report(report, tmp_path, "quick")
    assert json.loads((tmp_path / "quick.json").read_text()) == report
    assert (tmp_path / "quick.md").read_text() == tables
    assert (tmp_path / "quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quick.json", "quick.md", "quick.png"]
    assert throughput[0]["speed_vs_dense"] == 1.0
    assert "| 4 | SemanIR | 4 | 16 |" in tables and "| mean |" in tables
    timing = report["ablation"]["timing"][0]
    assert timing["layer_over_stage"] == pytest.approx(
        timing["layer_median_ms"] / timing["stage_median_ms"]
    )


def test_noise_is_seeded_and_unclipped():
    clean = torch.full((1, 64, 64), 0.98)
    noisy = eval_set12.noisy_version(clean, 25.0, 0, 3)
    assert torch.equal(noisy, eval_set12.noisy_version(clean, 25.0, 0, 3))
    assert not torch.equal(noisy, eval_set12.noisy_version(clean, 25.0, 0, 4))
    assert not torch.equal(noisy, eval_set12.noisy_version(clean, 15.0, 0, 3))
    assert noisy.max() > 1.0  # not clipped
    assert (noisy - clean).std().item() == pytest.approx(25 / 255, rel=0.05)


def test_bm3d_outputs_are_cached(tmp_path, monkeypatch):
    calls = []

    def fake_bm3d(noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        calls.append(sigma)
        return noisy * 0.5 + 0.25

    monkeypatch.setattr(eval_set12, "run_bm3d", fake_bm3d)
    noisy = eval_set12.noisy_version(torch.full((1, 16, 16), 0.5), 25.0, 0, 0)
    cache = eval_set12.bm3d_cache_file(tmp_path, Path("01.png"), 25.0, 0, noisy)
    first = eval_set12.bm3d_output(noisy, 25.0, cache)
    second = eval_set12.bm3d_output(noisy, 25.0, cache)
    assert calls == [25.0] and torch.equal(first, second)
    assert torch.equal(first, eval_set12.quantize(fake_bm3d(noisy, 25.0)))
    assert cache != eval_set12.bm3d_cache_file(tmp_path, Path("01.png"), 25.0, 0, noisy + 0.1)


def test_eval_set12_on_synthetic_images(tmp_path, tiny_dir, data_root):
    argv = ["--model", f"tiny={tiny_dir}", "--sigmas", "25", "--models-only"]
    argv += ["--data-root", str(data_root), "--out", str(tmp_path)]
    assert eval_set12.main(argv) == 0
    report = json.loads((tmp_path / "set12.json").read_text())
    assert report["images"] == ["01.png", "02.png"] and report["bm3d"] is False
    assert [(r["image"], r["method"]) for r in report["rows"]] == [
        ("01.png", "noisy"),
        ("01.png", "tiny"),
        ("02.png", "noisy"),
        ("02.png", "tiny"),
    ]
    model = load_model(tiny_dir)
    for index, path in enumerate(sorted((data_root / "set12").iterdir())):
        clean = read_image(path, channels="gray")
        noisy = eval_set12.noisy_version(clean, 25.0, 0, index)
        output = restore(model, noisy[None])[0]
        noisy_row, model_row = report["rows"][2 * index : 2 * index + 2]
        assert noisy_row["psnr"] == float(psnr(noisy, clean))
        assert model_row["psnr"] == float(psnr(output, clean))
        assert model_row["ssim"] == float(ssim(output, clean))
    mean = {r["method"]: r for r in report["averages"]}
    assert mean["noisy"]["psnr"] == pytest.approx(20 * math.log10(255 / 25), abs=0.3)
    assert "| tiny | " in (tmp_path / "set12.md").read_text()
    assert (tmp_path / "set12_crops.png").stat().st_size > 0


def test_runtimes_compares_spandrel_and_onnx_runtime_with_restore(tmp_path, tiny_dir, data_root):
    image = data_root / "set12" / "01.png"
    argv = ["--model", str(tiny_dir), "--image", str(image), "--threads", "1"]
    assert runtimes.main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "runtimes.json").read_text())
    clean = read_image(image, channels="gray")[None]
    noisy = add_gaussian_noise(clean, 25.0, torch.Generator().manual_seed(0))
    expected = restore(load_model(tiny_dir), noisy, tile=None).clamp(0, 1)
    assert report["noisy_psnr_db"] == float(psnr(noisy.clamp(0, 1), clean))
    assert report["restore"]["psnr_db"] == float(psnr(expected, clean))
    assert report["restore"]["max_abs_difference"] == 0.0
    assert report["spandrel"]["max_abs_difference"] <= 1e-4  # the same modules and maths
    # ONNX Runtime's convolutions and norms round otherwise: on smooth images near-ties in the
    # top-k flip (docs/guide.md, "ONNX export"), moving a few pixels by less than one 8-bit level
    assert report["onnx"]["max_abs_difference"] < 1 / 255
    for name in ("spandrel", "onnx"):
        assert report[name]["psnr_db"] == pytest.approx(report["restore"]["psnr_db"], abs=1e-3)
        assert report[name]["share_above_one_level"] == 0.0
        assert Image.open(tmp_path / f"{name}.png").size == (1300, 360)
    assert "| ONNX Runtime (CPU) | " in (tmp_path / "runtimes.md").read_text()


def test_runtimes_refuses_a_missing_image_and_a_super_resolution_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runtimes.main(["--image", str(tmp_path / "none.png"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"error: --image: no such file: {tmp_path / 'none.png'}" in capsys.readouterr().err
    folder = tmp_path / "sr"
    build_model("semanir_test_tiny_columnar").save_pretrained(folder)  # x2 SR
    image = tmp_path / "one.png"
    write_image(image, torch.rand(1, 16, 16))
    with pytest.raises(SystemExit, match="--model: must be a denoiser, got x2"):
        runtimes.main(["--model", str(folder), "--image", str(image), "--out", str(tmp_path)])
    assert not (tmp_path / "runtimes.json").exists()


def test_eval_set12_ensemble_adds_an_x8_row_per_model(tmp_path, tiny_dir, data_root):
    argv = ["--model", f"tiny={tiny_dir}", "--sigmas", "25", "--models-only", "--ensemble"]
    out = tmp_path / "new" / "folder"  # --models-only makes no BM3D cache: nothing creates it
    argv += ["--data-root", str(data_root), "--out", str(out), "--limit", "1"]
    assert eval_set12.main(argv) == 0
    report = json.loads((out / "set12_first1.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["noisy", "tiny", "tiny +x8"]
    assert report["ensemble"] is True
    clean = read_image(sorted((data_root / "set12").iterdir())[0], channels="gray")
    noisy = eval_set12.noisy_version(clean, 25.0, 0, 0)
    output = restore(load_model(tiny_dir), noisy[None], ensemble=True)[0]
    assert report["rows"][2]["psnr"] == float(psnr(output, clean))


def test_parse_models_rejects_bad_names():
    assert eval_set12.parse_models(["a=x", "b=y"]) == {"a": Path("x"), "b": Path("y")}
    for bad in (["a"], ["=x"], ["bm3d=x"], ["a=x", "a=y"]):
        with pytest.raises(ValueError, match=r"NAME=DIR|reserved"):
            eval_set12.parse_models(bad)


BENCH_HINT = (
    'install the [bench] extra: pip install "semanir[bench]" '
    '(from a clone: pip install ./packages/common-kernels "./packages/semanir[bench]")'
)


def test_eval_set12_checks_its_setup_before_any_work(tmp_path, tiny_dir, data_root, monkeypatch):
    monkeypatch.setattr(eval_set12, "load_denoisers", no_work)
    monkeypatch.setattr(eval_set12, "evaluate", no_work)
    argv = ["--model", f"tiny={tiny_dir}", "--sigmas", "25", "--data-root", str(data_root)]
    blocker = tmp_path / "results"
    blocker.write_text("x")
    err = refusal(eval_set12.main, [*argv, "--models-only", "--out", str(blocker / "a")])
    assert err == f"eval_set12: error: --out {blocker}/a: cannot create it, {blocker} is a file\n"
    out = tmp_path / "out"
    with hidden_modules("bm3d"):
        err = refusal(eval_set12.main, [*argv, "--out", str(out)])
        assert err == f"eval_set12: error: module bm3d is not installed; {BENCH_HINT}\n"
        with pytest.raises(AssertionError, match="before checking"):  # --models-only: no BM3D
            eval_set12.main([*argv, "--models-only", "--out", str(out)])
    assert list(tmp_path.iterdir()) == [blocker] and blocker.read_text() == "x"


models_cuda = load_script("models_cuda")


def test_cuda_model_grid_covers_every_variant_mode_and_precision():
    specs = models_cuda.model_specs(quick=False)
    assert len(specs) == 3 * 2 * 2 * 7
    assert {s["variant"] for s in specs} == {
        "dense",
        "reference",
        "mask",
        "gather",
        "triton",
        "flex",
        "tiles",
    }
    assert {(s["config"], tuple(s["shape"]), s["k"]) for s in specs} == {
        ("semanir_small_sr_x4", (1, 3, 128, 128), 256),
        ("semanir_base_denoise_gray", (1, 1, 256, 256), 128),
        ("semanir_tiny_denoise_gray", (4, 1, 256, 256), 32),
    }
    quick = models_cuda.model_specs(quick=True)
    assert {s["precision"] for s in quick} == {"bf16"}
    assert {s["config"] for s in quick} == {s["config"] for s in specs}  # every size
    assert {s["config"] for s in quick if s["variant"] == "flex"} == {"semanir_tiny_denoise_gray"}
    assert len({models_cuda.spec_key(s) for s in specs}) == len(specs)


def test_cuda_run_journals_each_configuration_and_resumes(tmp_path, monkeypatch):
    """A run cut short keeps what it measured; the rerun measures only the rest."""
    measured = []

    def fake_measure(spec):
        if len(measured) == 3 and not (tmp_path / "stop").exists():
            (tmp_path / "stop").touch()
            raise KeyboardInterrupt  # the job limit hits after three configurations
        measured.append(models_cuda.spec_key(spec))
        return {**spec, "median_ms": 1.0, "peak_mib": 1.0}

    monkeypatch.setattr(run.MODELS_CUDA, "measure", fake_measure)
    monkeypatch.setattr(run.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(run.torch.cuda, "get_device_name", lambda: "fake GPU")
    with pytest.raises(KeyboardInterrupt):
        run.run_cuda(True, tmp_path)
    journal = tmp_path / "quick-cuda.partial.jsonl"
    assert len(journal.read_text().splitlines()) == 3
    assert run.run_cuda(True, tmp_path) == 0
    specs = models_cuda.model_specs(quick=True)
    assert sorted(measured) == sorted(models_cuda.spec_key(s) for s in specs)  # each once
    assert not journal.exists()
    saved = json.loads((tmp_path / "quick-cuda.json").read_text())
    assert len(saved["models"]) == len(specs)


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_cuda_model_steps_run_on_the_cpu_too(mode):
    """The GPU grid's step closures on a CPU tiny model: inference output, a training step."""
    spec = {"config": TINY, "shape": [1, 1, 16, 16], "k": 6, "variant": "mask", "mode": mode,
            "precision": "bf16"}  # fmt: skip
    model, image = models_cuda.build(spec, device="cpu")
    assert model.config.attention_backend == "mask"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = models_cuda.step_function(spec, model, image)()
    if mode == "infer":
        assert out.shape == image.shape and not model.training
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    else:
        assert out.ndim == 0 and model.training
        assert not torch.equal(model.shallow.weight, before["shallow.weight"])
    dense_model, _ = models_cuda.build({**spec, "variant": "dense"}, device="cpu")
    assert dense_model.config.dictionary == "dense"


def test_cuda_model_table_gives_ratios_to_the_dense_twin():
    rows = [
        {"config": "m", "shape": [1, 1, 8, 8], "mode": "train", "precision": "bf16",
         "variant": "dense", "median_ms": 10.0, "peak_mib": 100.0},
        {"config": "m", "shape": [1, 1, 8, 8], "mode": "train", "precision": "bf16",
         "variant": "triton", "median_ms": 12.0, "peak_mib": 50.0},
        {"config": "m", "shape": [1, 1, 8, 8], "mode": "train", "precision": "bf16",
         "variant": "gather", "error": "OutOfMemoryError: CUDA out of memory"},
    ]  # fmt: skip
    models_cuda.add_ratios(rows)
    assert rows[1]["time_x_dense"] == pytest.approx(1.2)
    assert rows[1]["memory_x_dense"] == pytest.approx(0.5)
    text = models_cuda.table(rows)
    cells = "10.0 ms / 100 MiB | - | - | OOM | 12.0 ms (1.20x) / 0.50x mem | - |"
    assert f"| m | 1x1x8x8 | train | bf16 | {cells}" in text


def test_run_refuses_cuda_without_a_device(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


plot_training = load_script("plot_training")


def write_metrics(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "epoch,lr-AdamW,step,train/loss,val/loss,val/psnr,val/ssim\n"
    lines = [
        f"0,,{r['step']},{r.get('loss', '')},,{r.get('psnr', '')},\n" for r in rows
    ]  # the CSVLogger layout: empty cells where a metric was not logged at that step
    path.write_text(header + "".join(lines))
    return path


def test_plot_training_joins_resumed_sessions(tmp_path, capsys):
    first = write_metrics(
        tmp_path / "logs" / "version_0" / "metrics.csv",
        [{"step": 24, "loss": 0.05}, {"step": 49, "loss": 0.04}, {"step": 49, "psnr": 27.5}],
    )
    second = write_metrics(
        tmp_path / "logs" / "version_1" / "metrics.csv",
        [{"step": 49, "psnr": 27.6}, {"step": 74, "loss": 0.03}, {"step": 99, "psnr": 28.0}],
    )
    os.utime(first, (1, 1))  # the older session
    curves = plot_training.read_curves(plot_training.metrics_files([tmp_path / "logs"]))
    assert curves["train/loss"] == {24: 0.05, 49: 0.04, 74: 0.03}
    assert curves["val/psnr"] == {49: 27.6, 99: 28.0}  # the later session wins at step 49
    out = tmp_path / "curve.png"
    args = [str(tmp_path / "logs"), "--out", str(out), "--json", str(tmp_path / "c.json")]
    assert plot_training.main(args) == 0
    assert out.stat().st_size > 0 and second.exists()
    assert json.loads((tmp_path / "c.json").read_text())["val/psnr"] == {"49": 27.6, "99": 28.0}
    assert "last at step 99: 28.000 dB" in capsys.readouterr().out
    assert plot_training.main([str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "neither a metrics.csv file nor a folder" in capsys.readouterr().err


def test_plot_training_checks_its_setup_before_reading_the_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(plot_training, "metrics_files", no_work)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    logs, png = str(tmp_path / "logs"), str(tmp_path / "curve.png")
    err = refusal(plot_training.main, [logs, "--out", str(blocker / "c.png")])
    message = f"--out {blocker}/c.png: cannot create its folder, {blocker} is a file"
    assert err == f"plot_training: error: {message}\n"
    err = refusal(plot_training.main, [logs, "--out", png, "--json", str(tmp_path)])
    assert err == f"plot_training: error: --json {tmp_path} is a folder, not a file\n"
    with hidden_modules("matplotlib"):
        err = refusal(plot_training.main, [logs, "--out", png])
    assert err == f"plot_training: error: module matplotlib is not installed; {BENCH_HINT}\n"
    assert list(tmp_path.iterdir()) == [blocker]


def test_run_checks_its_setup_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "run_all", no_work)
    monkeypatch.setattr(run, "run_cuda", no_work)
    blocker = tmp_path / "results"
    blocker.write_text("x")
    err = refusal(run.main, ["--quick", "--out", str(blocker)])
    assert err == f"run.py: error: --out {blocker} is a file, not a folder\n"
    out = tmp_path / "out"
    with hidden_modules("matplotlib"):
        err = refusal(run.main, ["--quick", "--out", str(out)])
        assert err == f"run.py: error: module matplotlib is not installed; {BENCH_HINT}\n"
        assert list(tmp_path.iterdir()) == [blocker] and blocker.read_text() == "x"
        with pytest.raises(AssertionError, match="before checking"):  # the CUDA report: no plot
            run.main(["--device", "cuda", "--out", str(out)])


tile_occupancy = load_script("tile_occupancy")


def test_relabelled_lists_are_the_same_graph_in_the_new_order():
    g = torch.Generator().manual_seed(0)
    idx = torch.rand(2, 12, 12, generator=g).argsort(dim=-1)[..., :4]  # (B', N, K)
    order = torch.rand(2, 12, generator=g).argsort(dim=-1)  # new row r = old token order[r]
    new = tile_occupancy.relabel(idx, order)
    for b in range(2):
        for r in range(12):
            assert order[b][new[b, r]].tolist() == idx[b, order[b, r]].tolist()


def test_occupied_share_counts_blocks_with_a_pair():
    idx = torch.tensor([[[0], [1], [2], [3]]])  # each token its own neighbour: the diagonal
    assert tile_occupancy.occupied_share(idx, 4, 2) == 0.5  # 2 of the 4 (2 x 2) blocks
    assert tile_occupancy.occupied_share(idx, 4, 4) == 1.0


def test_tile_occupancy_rows_on_random_features():
    feats = [torch.randn(1, 8, 32, 32, generator=torch.Generator().manual_seed(1))]
    rows = tile_occupancy.measure(feats)
    assert {(r["window"], r["tile"]) for r in rows} == {
        (8, 16),
        (8, 32),
        (16, 16),
        (16, 32),
        (16, 64),
        (32, 16),
        (32, 32),
        (32, 64),
    }
    assert all(0 < r["occupied_pca"] <= 1 and 0 < r["occupied_raster"] <= 1 for r in rows)
    assert "| 32 | 1024 | 64 | 1/16 | 64 |" in tile_occupancy.markdown(rows, "random")


memory_bench = load_script("memory")


def test_memory_benchmark_measures_whole_and_auto_tiled_restores(tmp_path, monkeypatch):
    """One worker run in this process: the whole image, then under a budget it cannot fit."""
    whole = memory_bench.measure(96, None, threads=1)
    assert whole["tile"] is None and whole["seconds"] > 0 and whole["peak_growth_mib"] >= 0
    tiled = memory_bench.measure(96, budget=2**25, threads=1)  # 32 MiB: 64 px tiles
    assert tiled["tile"] == 64
    assert tiled["estimate_mib"] < whole["estimate_mib"]
    text = memory_bench.markdown([whole, tiled], threads=1)
    assert "| 96 | 0.01 | auto, 0.03125 GiB | 64 |" in text


def test_eval_set12_scores_another_folder_without_the_excluded_images(data_root) -> None:
    assert [p.name for p in eval_set12.set12_paths(data_root, exclude=("01",))] == ["02.png"]
    with pytest.raises(FileNotFoundError, match=r"no images left in .*set12"):
        eval_set12.set12_paths(data_root, exclude=("01", "02"))


@pytest.fixture(scope="module")
def colour_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random-init tiny colour U-net's folder and <root>/set5 with two smooth colour PNGs."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("tiny_colour") / "model"
    build_model(TINY, in_channels=3, out_channels=3, img_mean=None).save_pretrained(folder)
    root = tmp_path_factory.mktemp("colour_data")
    ramp = torch.linspace(0.3, 0.7, 64)
    for index in range(2):
        image = torch.stack([ramp.view(64, 1).expand(64, 64), ramp.view(1, 64).expand(64, 64),
                             torch.full((64, 64), 0.4 + 0.1 * index)])  # fmt: skip
        write_image(root / "set5" / f"{index + 1:02d}.png", image)
    return folder, root


def test_quantize_keeps_the_channel_layout():
    image = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    levels = eval_set12.quantize(image)
    assert levels.shape == (3, 5, 7)
    assert torch.equal(levels * 255, (image * 255).round())
    assert eval_set12.quantize(image[:1]).shape == (1, 5, 7)


def test_colour_bm3d_is_cbm3d_on_the_rgb_image():
    clean = torch.linspace(0.2, 0.8, 48).view(1, 1, 48).expand(3, 48, 48).clone()
    clean[1] = clean[1].flip(-1)  # channels that differ
    noisy = eval_set12.noisy_version(clean, 25.0, 0, 0)
    denoised = eval_set12.run_bm3d(noisy, 25.0)
    assert denoised.shape == (3, 48, 48)
    assert float(psnr(denoised, clean)) > float(psnr(noisy, clean)) + 8
    # each channel is denoised as itself: no channel swap or transpose
    for channel in range(3):
        assert float(psnr(denoised[channel : channel + 1], clean[channel : channel + 1])) > 30


def test_eval_set12_colour_scores_colour_models_on_rgb(tmp_path, colour_setup, tiny_dir):
    folder, root = colour_setup
    argv = ["--model", f"tiny={folder}", "--sigmas", "15", "--models-only", "--color"]
    argv += ["--set", "set5", "--data-root", str(root), "--out", str(tmp_path)]
    assert eval_set12.main(argv) == 0
    report = json.loads((tmp_path / "set5_color.json").read_text())
    assert report["channels"] == "rgb" and report["images"] == ["01.png", "02.png"]
    model = load_model(folder)
    for index, path in enumerate(sorted((root / "set5").iterdir())):
        clean = read_image(path, channels="rgb")
        noisy = eval_set12.noisy_version(clean, 15.0, 0, index)
        assert noisy.shape == (3, 64, 64)
        output = restore(model, noisy[None])[0]
        noisy_row, model_row = report["rows"][2 * index : 2 * index + 2]
        assert noisy_row["psnr"] == float(psnr(noisy, clean))
        assert model_row["psnr"] == float(psnr(output, clean))
    assert "bm3d is CBM3D" in (tmp_path / "set5_color.md").read_text()
    assert (tmp_path / "set5_color_crops.png").stat().st_size > 0
    with pytest.raises(ValueError, match="is not a colour denoiser"):
        eval_set12.main([*argv[:1], f"gray={tiny_dir}", *argv[2:]])


eval_sr = load_script("eval_sr")


def test_eval_sr_scores_each_set_against_bicubic(tmp_path, capsys) -> None:
    """A tiny x2 columnar model on two colour images per set: the JSON holds
    ``semanir.evaluation.evaluate_images``'s rows per set, the markdown their means and gains."""
    from semanir.evaluation import evaluate_images
    from semanir.inference import restore_image

    torch.manual_seed(0)
    model_dir = tmp_path / "sr_model"
    build_model("semanir_test_tiny_columnar").save_pretrained(model_dir)
    for name in ("seta", "setb"):
        for index in range(2):
            image = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(index))
            write_image(tmp_path / "data" / name / f"im{index}.png", image)
    out = tmp_path / "results"
    argv = ["--model", str(model_dir), "--sets", "seta", "setb", "--data-root",
            str(tmp_path / "data"), "--out", str(out)]  # fmt: skip
    assert eval_sr.main(argv) == 0
    result = json.loads((out / "sr_x2.json").read_text())
    assert result["scale"] == 2 and result["model"] == "sr_model" and list(result["sets"]) == [
        "seta", "setb",
    ]  # fmt: skip
    model = load_model(str(model_dir))
    expected = evaluate_images(
        model, [tmp_path / "data" / "seta"], "sr", restorer=lambda x: restore_image(model, x)
    )
    assert result["sets"]["seta"] == expected
    mean = expected[-1]
    row = (
        f"| seta (2 images) | {mean['psnr_in']:.2f} / {mean['ssim_in']:.4f} | "
        f"{mean['psnr_out']:.2f} / {mean['ssim_out']:.4f} | "
        f"{mean['psnr_out'] - mean['psnr_in']:+.2f} |"
    )
    assert row in (out / "sr_x2.md").read_text().splitlines()
    assert "results: " in capsys.readouterr().out


def test_eval_sr_checks_its_folders_before_the_model_loads(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(eval_sr, "load_for_task", no_work)
    (tmp_path / "data" / "set5").mkdir(parents=True)
    argv = ["--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    with pytest.raises(FileNotFoundError, match=r"no images .* found in .*set5"):
        eval_sr.main([*argv, "--sets", "set5"])
    with pytest.raises(FileNotFoundError, match="set14"):
        eval_sr.main([*argv, "--sets", "set14"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = refusal(eval_sr.main, [*argv[:2], "--out", str(blocker / "a")])
    assert err == f"eval_sr: error: --out {blocker}/a: cannot create it, {blocker} is a file\n"


upsampler_speed = load_script("upsampler_speed")
UPSAMPLER_TINY = ["--width", "8", "--batch", "1", "--size", "6", "--image", "8"]


def test_upsampler_speed_times_both_codes_in_the_same_rounds(tmp_path) -> None:
    """The module beside HEAD's: a row per (case, code), both codes' FLOPs counted, the ratio
    given on this code's rows only, and the three files written."""
    argv = [*UPSAMPLER_TINY, "--rounds", "2", "--repeat", "1", "--baseline", "HEAD"]
    report = upsampler_speed.main([*argv, "--out", str(tmp_path)])
    commit = report["rows"][-1]["code"].removeprefix("baseline ")
    assert [(r["case"], r["code"]) for r in report["rows"]] == [
        ("train", "current"), ("infer", "current"),
        ("train", f"baseline {commit}"), ("infer", f"baseline {commit}"),
    ]  # fmt: skip
    for row in report["rows"]:
        assert row["gflop"] > 0 and row["ms_min"] <= row["ms"] <= row["ms_max"]
        assert row["gflop_per_s"] == pytest.approx(row["gflop"] / (row["ms"] / 1e3))
        assert ("x_baseline" in row) == (row["code"] == "current")
    train = {r["code"]: r for r in report["rows"] if r["case"] == "train"}
    assert train["current"]["x_baseline"] == pytest.approx(
        train["current"]["ms"] / train[f"baseline {commit}"]["ms"]
    )
    saved = json.loads((tmp_path / "upsampler_speed.json").read_text())
    assert saved["rows"] == report["rows"] and saved["setup"]["scale"] == 4  # JSON floats: exact
    table = (tmp_path / "upsampler_speed.md").read_text()
    assert f"| train | baseline {commit} |" in table and "infer: 1 x 8x8 (no_grad" in table
    assert (tmp_path / "upsampler_speed.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "5"], "argument --size: expected an integer >= 6, got '5'"),
        (["--scale", "8"], "argument --scale: invalid choice: 8"),
        (["--baseline", "no-such-revision"], "--baseline: unknown revision 'no-such-revision'"),
        (["--baseline", "HEAD"], "'HEAD' has no packages/semanir/src/semanir/no_such.py"),
    ],
)
def test_upsampler_speed_refuses_bad_arguments_before_timing(
    argv, message, tmp_path, capsys, monkeypatch
):
    """The last case stands for a revision older than the module (0.4.7): one without the file
    (no old history needed, as in a shallow clone)."""
    monkeypatch.setattr(upsampler_speed, "MODULE_PATH", "packages/semanir/src/semanir/no_such.py")
    with pytest.raises(SystemExit) as exit_info:
        upsampler_speed.main([*UPSAMPLER_TINY, *argv, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err + str(exit_info.value.code)
    assert not (tmp_path / "upsampler_speed.json").exists()


shared_machine = load_script("shared_machine")


def test_shared_machine_worker_and_report(tmp_path, tiny_dir, data_root, monkeypatch):
    """The worker restores the shared image at a size (a tiny model here); the report's rows
    are each case's ratio against its target, from a run's JSON; the setup is checked first."""
    image = data_root / "set12" / "01.png"
    (tmp_path / "set12").mkdir()
    shutil.copy(image, tmp_path / "set12" / "05.png")
    times = shared_machine.worker(str(tiny_dir), 64, 2, 1, tmp_path)["times"]
    assert len(times) == 2 and all(t > 0 for t in times)

    def row(case, semanir_s, dncnn_s):
        cell = lambda s: {"s": s, "s_per_mp": s / 0.147456, "spread": 1.1}  # noqa: E731
        return {"size": 384, "case": case, "SemanIR": cell(semanir_s), "DnCNN": cell(dncnn_s),
                "ratio": semanir_s / dncnn_s}  # fmt: skip

    rows = [row("quiet", 0.6, 1.6), row("loaded", 2.0, 3.0), row("two processes", 1.2, 2.9)]
    data = {"rows": rows, "cpu": "CPU", "threads": 2, "torch": "2", "runs": 3, "calls": 4,
            "policy": "command"}  # fmt: skip
    lines = shared_machine.report(data).splitlines()
    assert lines[4] == "| 384 | quiet | 4.07 | 10.85 | 0.37 | <= 0.5 ok | 1.10 | 1.10 |"
    assert lines[5] == "| 384 | loaded | 13.56 | 20.35 | 0.67 | <= 0.6 MISSED | 1.10 | 1.10 |"
    assert lines[6].startswith("| 384 | two processes | 8.14 | 19.67 | 0.41 | - |")
    shared_machine.plot(data, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(shared_machine, "run", no_work)
    err = refusal(shared_machine.main, ["--data", str(data_root), "--out", str(tmp_path / "o")])
    assert err == f"shared_machine.py: error: --data: no set12/05.png under {data_root}\n"
    err = refusal(shared_machine.main, ["--runs", "0", "--out", str(tmp_path / "o")])
    assert err == "shared_machine.py: error: --runs must be >= 1, got 0\n"
