"""Each API argument error reaches a command-line user under the flag they typed.

The API raises :class:`InvalidArgument` naming its own argument (``add_noise``, ``sigma``,
``tile``...); ``semanir.cli.FLAGS`` maps each to its flag. For every subcommand, each flag with
a bad value gives exactly one line ``semanir CMD: error: FLAG...`` and status 2 (both ends are
asserted: the API's argument below, the command's line here), before any model loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common_kernels.runtime.errors import InvalidArgument
from semanir.batch import plan_restore
from semanir.cli import FLAGS, main
from semanir.evaluation import plan_evaluation
from semanir.export import export_onnx
from semanir.io import write_image

WINDOW = "the model's window size 8 (pixels)"
K_RANGE = "must be an int in [1, 64] (a 8x8 window holds 64 tokens)"
SIGMA_RANGE = "must be in [0, 255] (8-bit scale)"

RESTORE = {
    "--add-noise": (["--add-noise", "-5"], f"--add-noise: {SIGMA_RANGE}, got -5.0"),
    "--add-noise (task)": (
        ["--task", "jpeg", "--add-noise", "5"], "--add-noise applies to --task denoise only"
    ),
    "--add-noise (no level)": (["--add-noise"], "--add-noise without a level needs --sigma"),
    "--sigma": (["--add-noise", "--sigma", "300"], f"--sigma: {SIGMA_RANGE}, got 300.0"),
    "--sigma (alone)": (
        ["--sigma", "25"], "--sigma sets the level of --add-noise and does nothing without it "
        "(the models are blind: they take no noise level)",
    ),
    "--tile": (["--tile", "3"], f"--tile: must be an int >= {WINDOW}, got 3"),
    "--tile-overlap": (
        ["--tile", "16", "--tile-overlap", "16"],
        "--tile-overlap: must be in [0, --tile - 1] = [0, 15] (pixels), got 16",
    ),
    "--tile-overlap (no tile)": (
        ["--tile-overlap", "-1"], "--tile-overlap: must be >= 0 (pixels), got -1"
    ),
    "--k": (["--k", "65"], f"--k: {K_RANGE}, got 65"),
    "--task": (
        ["--task", "sr", "--model", "semanir_tiny_denoise_gray"],
        "the model keeps the image size, which does not fit --task sr",
    ),
    "--per-channel": (
        ["--per-channel", "--model", "semanir_tiny_denoise_color"],
        "--per-channel applies to gray models; this model takes 3 channels",
    ),
    "--skip-existing": (
        ["--in-place", "--skip-existing"],
        "--skip-existing: cannot resume an --in-place batch: every result exists already (it "
        "is its input)",
    ),
}  # fmt: skip

EVAL = {
    "--sigma": (["--sigma", "-5"], f"--sigma: {SIGMA_RANGE}, got -5.0"),
    "--sigma (missing)": ([], "--task denoise needs --sigma, the noise level (0-255)"),
    "--quality": (
        ["--task", "jpeg", "--quality", "0"], "--quality: must be an integer in [1, 95], got 0"
    ),
    "--quality (denoise)": (
        ["--sigma", "5", "--quality", "30"],
        "--quality: applies to --task jpeg only, not 'denoise'",
    ),
    "--scale": (["--task", "sr", "--scale", "7"], "--scale: must be one of 2, 3, 4, got 7"),
    "--scale (denoise)": (
        ["--sigma", "5", "--scale", "2"], "--scale: applies to --task sr only, not 'denoise'"
    ),
    "--tile": (["--sigma", "5", "--tile", "3"], f"--tile: must be an int >= {WINDOW}, got 3"),
    "--tile-overlap": (
        ["--sigma", "5", "--tile", "8", "--tile-overlap", "9"],
        "--tile-overlap: must be in [0, --tile - 1] = [0, 7] (pixels), got 9",
    ),
    "--k": (["--sigma", "5", "--k", "0"], f"--k: {K_RANGE}, got 0"),
}  # fmt: skip

EXPORT = {
    "--opset": (["--opset", "17"], "--opset: must be an int in [18, {newest}], got 17"),
    "--k": (["--k", "0"], f"--k: {K_RANGE}, got 0"),
    "OUT.onnx": (["--opset", "18"], "OUT.onnx: must name a .onnx file, got {out}"),
}


@pytest.fixture
def photo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 16x16 gray PNG; the models must not load (every check comes first)."""
    import torch

    monkeypatch.setattr("semanir.inference.load_model", lambda *a, **k: pytest.fail("loaded"))
    path = tmp_path / "photo.png"
    write_image(path, torch.linspace(0, 1, 256).view(1, 16, 16))
    return path


def error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of ``semanir ARGV``, which must exit with status 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err.rstrip("\n")


@pytest.mark.parametrize("case", list(RESTORE))
def test_restore_names_the_flag(case: str, photo: Path, capsys) -> None:
    options, message = RESTORE[case]
    argv = ["restore", str(photo), "-o", str(photo.with_name("out.png")), *options]
    assert error_line(argv, capsys) == f"semanir restore: error: {message}"


@pytest.mark.parametrize("case", list(EVAL))
def test_eval_names_the_flag(case: str, photo: Path, capsys) -> None:
    options, message = EVAL[case]
    argv = ["eval", "--data", str(photo), *options]
    assert error_line(argv, capsys) == f"semanir eval: error: {message}"


@pytest.mark.parametrize("case", list(EXPORT))
def test_export_names_the_flag(case: str, tmp_path: Path, capsys) -> None:
    from semanir.export import max_opset

    options, message = EXPORT[case]
    out = tmp_path / ("out.txt" if case == "OUT.onnx" else "out.onnx")
    argv = ["export", "semanir_tiny_denoise_gray", str(out), *options]
    expected = message.format(newest=max_opset(), out=out)
    assert error_line(argv, capsys) == f"semanir export: error: {expected}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("port", ["0", "65536"])
def test_app_names_the_flag(port: str, tmp_path: Path, capsys) -> None:
    argv = ["app", "-o", str(tmp_path / "out"), "--port", port]
    expected = f"semanir app: error: --port: must be in [1, 65535], got {port}"
    assert error_line(argv, capsys) == expected


def test_every_argument_the_api_names_has_a_flag() -> None:
    """The arguments the tests above make the API name are all in the one table."""
    named = {
        "add_noise", "sigma", "tile", "tile_overlap", "k", "task", "per_channel",
        "skip_existing", "quality", "scale", "opset", "path", "port", "output",
    }  # fmt: skip
    assert named - FLAGS.keys() == set()


@pytest.mark.parametrize(
    ("arguments", "argument", "message"),
    [
        ({"add_noise": -5}, "add_noise", f"{SIGMA_RANGE}, got -5"),
        ({"add_noise": True, "sigma": 300}, "sigma", f"{SIGMA_RANGE}, got 300"),
        ({"add_noise": True}, "add_noise", "add_noise=True without a level needs sigma"),
        ({"sigma": 25}, "sigma", "sigma sets the level of add_noise=True and does nothing "
         "without it (the models are blind: they take no noise level)"),
        ({"task": "sr", "add_noise": 5}, "add_noise", "add_noise applies to task='denoise' only"),
        ({"tile": 3}, "tile", f"must be an int >= {WINDOW}, got 3"),
        ({"tile": 16, "tile_overlap": 16}, "tile_overlap",
         "must be in [0, tile - 1] = [0, 15] (pixels), got 16"),
        ({"k": 65}, "k", f"{K_RANGE}, got 65"),
    ],
)  # fmt: skip
def test_plan_restore_names_its_arguments(photo: Path, arguments, argument, message) -> None:
    with pytest.raises(InvalidArgument) as caught:
        plan_restore(photo, photo.with_name("out.png"), **arguments)
    assert caught.value.argument == argument
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("arguments", "argument", "message"),
    [
        ({"sigma": -5}, "sigma", f"{SIGMA_RANGE}, got -5"),
        ({"task": "jpeg", "quality": 0}, "quality", "must be an integer in [1, 95], got 0"),
        ({"sigma": 5, "quality": 30}, "quality", "applies to task='jpeg' only, not 'denoise'"),
        ({"task": "sr", "scale": 7}, "scale", "must be one of 2, 3, 4, got 7"),
        ({"sigma": 5, "tile": 3}, "tile", f"must be an int >= {WINDOW}, got 3"),
        ({"sigma": 5, "k": 0}, "k", f"{K_RANGE}, got 0"),
    ],
)  # fmt: skip
def test_plan_evaluation_names_its_arguments(photo: Path, arguments, argument, message) -> None:
    with pytest.raises(InvalidArgument) as caught:
        plan_evaluation(photo, **{"task": "denoise", **arguments})
    assert caught.value.argument == argument
    assert caught.value.message == message


def test_export_onnx_names_its_arguments(tmp_path: Path) -> None:
    for arguments, argument in [
        ({"opset": 17}, "opset"), ({"k": 0}, "k"), ({"path": tmp_path / "o.txt"}, "path"),
    ]:  # fmt: skip
        with pytest.raises(InvalidArgument) as caught:
            export_onnx(**{"model": "semanir_tiny_denoise_gray", "path": tmp_path / "o.onnx",
                           **arguments})  # fmt: skip
        assert caught.value.argument == argument


def estimate_text(tile, *, config: str = "semanir_tiny_denoise_gray", budget: int) -> str:
    """The estimate part of the refusal of a 16x16 photo (see check_restore_memory)."""
    from semanir.inference import read_model_config
    from semanir.memory import human_bytes as gib
    from semanir.memory import restore_estimate

    one_pass, images = restore_estimate(read_model_config(config), 16, 16, tile=tile)
    return (
        f"needs an estimated {gib(one_pass + images)} (a pass {gib(one_pass)}, the full-size "
        f"images {gib(images)}), more than the {gib(budget)} available"
    )


@pytest.mark.parametrize(
    ("options", "tile", "head", "advice"),
    [
        (["--tile", "100000"], 100000, "--tile 100000: restoring photo.png (16x16 px) in 100000 "
         "px tiles", "; use a smaller --tile or --tile auto"),
        (["--tile", "none"], None, "--tile: restoring photo.png (16x16 px) whole",
         "; use a smaller --tile or --tile auto"),
        ([], "auto", "IN photo.png (16x16 px)", "; restore a smaller image"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["restore", "eval"])
def test_a_restore_over_the_memory_estimate_is_refused_naming_the_option(
    command, options, tile, head, advice, photo: Path, capsys, monkeypatch
) -> None:
    """Sizes are bounded by the estimate before any work (the limit made small here)."""
    budget = 1000
    monkeypatch.setattr(f"semanir.{'batch' if command == 'restore' else 'evaluation'}"
                        ".available_bytes", lambda device: budget)  # fmt: skip
    if command == "restore":
        argv = ["restore", str(photo), "-o", str(photo.with_name("out.png")), *options]
    else:
        argv = ["eval", "--data", str(photo), "--sigma", "5", *options]
        head = head.replace("IN", "--data")
    expected = f"{head} {estimate_text(tile, budget=budget)}{advice}"
    assert error_line(argv, capsys) == f"semanir {command}: error: {expected}"


def test_plan_restore_refuses_a_pass_over_its_memory_budget(photo: Path) -> None:
    from common_kernels.runtime.errors import InvalidValue

    for tile, argument in ((None, "tile"), (64, "tile"), ("auto", "inputs")):
        with pytest.raises(InvalidValue) as caught:
            plan_restore(photo, photo.with_name("o.png"), tile=tile, memory_budget=1000)
        assert caught.value.argument == argument
        assert estimate_text(tile, budget=1000) in caught.value.message
    plan = plan_restore(photo, photo.with_name("o.png"), tile=None, memory_budget=2**30)
    assert len(plan.jobs) == 1  # within the budget: planned
