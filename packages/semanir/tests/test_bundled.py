"""Bundled models by name and by task: load_model, restore/eval without --model, semanir models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common_kernels.runtime.errors import InvalidArgument
from semanir import bundled, tasks
from semanir.bundled import BundledModel, bundled_model, model_for_task
from semanir.cli import main
from semanir.inference import default_weights_dir, load_model, model_folder, restore
from semanir.io import read_image, write_image
from semanir.models import build_model, get_config, model_from_config


def test_the_default_gray_denoiser_loads_by_name() -> None:
    by_name = load_model("semanir_tiny_denoise_gray")
    default = load_model()
    assert by_name.config == default.config
    for (name, a), (_, b) in zip(
        by_name.state_dict().items(), default.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert model_folder("semanir_tiny_denoise_gray") == default_weights_dir()


def test_every_table_entry_is_installed_with_a_config_of_its_task() -> None:
    """The wheel holds every model of the table, and each one's config fits its entry."""
    assert bundled.installed_models() == list(bundled.BUNDLED_MODELS.values())
    total = 0
    for entry in bundled.installed_models():
        model = load_model(entry.name)
        assert model.in_channels == (1 if entry.channels == "gray" else 3), entry.name
        assert model.upscale == entry.scale, entry.name
        total += (entry.folder / "model.safetensors").stat().st_size
    assert total < 10 * 2**20  # the bundled weights together stay under 10 MB


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("nonexistent_model_xyz", ValueError, "unknown model 'nonexistent_model_xyz': not a "
         "bundled model (semanir_tiny_denoise_gray"),
        ("./no_such_folder", FileNotFoundError, "no model folder ./no_such_folder (nothing at"),
        ("~/no_such_folder_xyz", FileNotFoundError, "no model folder ~/no_such_folder_xyz"),
    ],
)  # fmt: skip
def test_names_that_are_neither_bundled_nor_on_disk_fail_at_once(name, error, message) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        load_model(name)


def test_a_hub_id_is_only_a_name_of_the_form_owner_slash_name(monkeypatch, tmp_path) -> None:
    asked = []

    def fake_download(repo_id: str, filename: str) -> str:
        asked.append(repo_id)
        raise OSError("offline")

    monkeypatch.setattr("semanir.inference.hf_hub_download", fake_download)
    monkeypatch.setattr("semanir.inference.check_hub", lambda repo_id: None)  # "reachable"
    with pytest.raises(FileNotFoundError, match="owner/model is not a local folder, and the hub"):
        load_model("owner/model")
    assert asked == ["owner/model"]
    monkeypatch.chdir(tmp_path)
    build_model("semanir_test_tiny_unet").save_pretrained(tmp_path / "local_model")
    assert load_model("local_model").in_channels == 1  # an existing folder, no ./ needed
    assert asked == ["owner/model"]


@pytest.fixture
def fake_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, BundledModel]:
    """A bundle of tiny random models, one per task, in place of the shipped one."""
    torch.manual_seed(0)
    configs = {
        ("tiny_gray", "denoise", "gray"): get_config("semanir_test_tiny_unet"),
        ("tiny_colour", "denoise", "rgb"): get_config(
            "semanir_test_tiny_unet", in_channels=3, out_channels=3
        ),
        ("tiny_jpeg", "jpeg", "gray"): get_config("semanir_test_tiny_unet"),
        ("tiny_sr_x2", "sr", "rgb"): get_config("semanir_test_tiny_columnar"),
    }
    table = {}
    for (name, task, channels), config in configs.items():
        model_from_config(config).save_pretrained(tmp_path / name)
        table[name] = BundledModel(name, task, channels, config.upscale, "noise", "none")
    monkeypatch.setattr(BundledModel, "folder", property(lambda self: tmp_path / self.name))
    monkeypatch.setattr(bundled, "BUNDLED_MODELS", table)
    monkeypatch.setattr("semanir.inference.BUNDLED_MODELS", table)
    records = {
        name: replace(task, bundled=tuple(n for n, entry in table.items() if entry.task == name))
        for name, task in tasks.TASKS.items()
    }  # each task's bundled models: the tiny ones
    monkeypatch.setattr(tasks, "TASKS", records)
    return table


def test_model_for_task_picks_by_task_and_channels(fake_bundle) -> None:
    assert model_for_task("denoise", "gray").name == "tiny_gray"
    assert model_for_task("denoise", "rgb").name == "tiny_colour"
    assert model_for_task("jpeg", "rgb").name == "tiny_jpeg"  # the gray model: luma
    assert model_for_task("sr", "gray").name == "tiny_sr_x2"
    assert load_model("tiny_sr_x2").upscale == 2
    with pytest.raises(ValueError, match="task: must be one of denoise, jpeg, sr, got 'blur'"):
        model_for_task("blur", "gray")
    with pytest.raises(KeyError, match="unknown bundled model 'x'; bundled models: tiny_gray, "):
        bundled_model("x")


def test_a_task_without_a_bundled_model_is_refused_before_loading(fake_bundle, monkeypatch):
    del fake_bundle["tiny_sr_x2"]
    with pytest.raises(InvalidArgument) as error:
        model_for_task("sr", "rgb")
    assert error.value.argument == "task"
    assert str(error.value).startswith("no bundled model does task='sr'; bundled models: tiny_")
    assert str(error.value).endswith("(or pass model FOLDER_OR_HUB_ID)")


def test_restore_without_model_uses_the_task_model_of_each_image(
    fake_bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    gray, colour = torch.rand(1, 16, 20), torch.rand(3, 16, 20)
    write_image(inputs / "gray.png", gray)
    write_image(inputs / "colour.png", colour)
    assert main(["restore", str(inputs), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "semanir restore: --task denoise: the bundled tiny_colour (rgb images)" in err
    assert "semanir restore: --task denoise: the bundled tiny_gray (gray images)" in err
    for name, model_name in (("gray.png", "tiny_gray"), ("colour.png", "tiny_colour")):
        image = read_image(inputs / name)
        expected = restore(load_model(model_name), image[None])[0]
        written = read_image(tmp_path / "out" / name)
        assert written.shape == image.shape
        assert (written - expected).abs().max() <= 0.5 / 255 + 1e-6, name


def test_restore_sr_writes_the_upscaled_size_whole_and_tiled(
    fake_bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = torch.rand(3, 24, 20)
    write_image(tmp_path / "small.png", image)
    assert main(["restore", str(tmp_path / "small.png"), "-o", str(tmp_path / "big.png"),
                 "--task", "sr"]) == 0  # fmt: skip
    assert main(["restore", str(tmp_path / "small.png"), "-o", str(tmp_path / "tiled.png"),
                 "--task", "sr", "--tile", "16", "--tile-overlap", "4"]) == 0  # fmt: skip
    assert "the bundled tiny_sr_x2 (rgb images)" in capsys.readouterr().err
    model = load_model("tiny_sr_x2")
    whole, tiled = read_image(tmp_path / "big.png"), read_image(tmp_path / "tiled.png")
    assert whole.shape == tiled.shape == (3, 48, 40)
    expected = restore(model, read_image(tmp_path / "small.png")[None])[0]
    assert (whole - expected).abs().max() <= 0.5 / 255 + 1e-6
    expected_tiled = restore(model, read_image(tmp_path / "small.png")[None], tile=16,
                             tile_overlap=4)[0]  # fmt: skip
    assert (tiled - expected_tiled).abs().max() <= 0.5 / 255 + 1e-6


def test_eval_takes_every_bundled_model_on_its_task(
    fake_bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "clean"
    data.mkdir()
    write_image(data / "a.png", torch.linspace(0.2, 0.8, 32).expand(3, 32, 32))
    runs = {
        "tiny_colour": ["--task", "denoise", "--sigma", "15"],
        "tiny_jpeg": ["--task", "jpeg", "--quality", "20"],
        "tiny_sr_x2": ["--task", "sr"],
    }
    for name, options in runs.items():
        assert main(["eval", "--data", str(data), *options]) == 0
        captured = capsys.readouterr()
        assert f"the bundled {name}" in captured.err
        assert f"model: {name}" in captured.out and "mean" in captured.out


def test_models_lists_the_bundle(fake_bundle, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.index("tiny_gray\n  task denoise (gray)") < out.index("tiny_sr_x2\n  task sr (rgb")
    assert "task sr (rgb, x2), 0.0 MB" in out and "trained on noise" in out


def test_an_unreachable_hub_is_said_at_once(monkeypatch, tmp_path) -> None:
    """With HF_HUB_OFFLINE and nothing cached the error comes before any download attempt and
    says that the hub was not asked (before 0.3: 35 s of retries, then a missing config)."""
    from common_kernels.runtime.hub import HubUnreachableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(
        "semanir.inference.hf_hub_download", lambda **kwargs: pytest.fail("downloaded")
    )
    with pytest.raises(HubUnreachableError, match="owner/model is not in the local hub cache"):
        load_model("owner/model")
