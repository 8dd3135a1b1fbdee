"""The API owns the checks (issue 25, items 1 and 3): ``check_from_pretrained`` (run first by
``FeatureExtractor.from_pretrained``) gives the CLI's one-line messages, naming the argument
instead of the flag, before any weights are loaded; the loader rule of
``common_kernels.runtime.hub``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common_kernels.runtime.hub import HubUnreachableError
from common_kernels.runtime.testing import unreachable_hub
from diffeat import FeatureExtractor
from diffeat.cli import main
from diffeat.extractor import check_from_pretrained

ADVICE = "download it on a machine with network access, or give a local folder (./DIR)"


@pytest.fixture
def no_weights(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("weights were loaded before the checks")

    monkeypatch.setattr("diffeat.extractor.load_components", fail)


def test_check_from_pretrained_plans_without_weights(model_dirs, no_weights):
    plan = check_from_pretrained(model_dirs["sd15"], layers="all", image_size=(64, 96))
    assert plan.source == model_dirs["sd15"] and plan.preset is None
    assert plan.requested == ("all",) and len(plan.names) == len(plan.infos) == 198
    # shapes at the size rounded up to the model's multiple (64): 64x128 px, latent 8x16
    assert plan.infos[0].name == "vae-out" and plan.infos[0].shape == (4, 8, 16)
    default = check_from_pretrained(model_dirs["sdxl"], text_stack=False)
    assert default.preset == "ours-xl" and default.names == default.requested


def test_api_and_cli_give_the_same_message(model_dirs, tmp_path, capsys, no_weights):
    sd15 = model_dirs["sd15"]
    cases = {  # from_pretrained keywords -> (message, the CLI's flags)
        "timestep": (
            {"timestep": 1000},
            "timestep: must be an integer in [0, 999] (the scheduler's num_train_timesteps is "
            "1000); got 1000",
            ["--timestep", "1000"],
        ),
        "seed": (
            {"seed": -1},
            "seed must be in [0, 18446744073709551615], got -1",
            ["--seed", "-1"],
        ),
        "preset": (
            {"preset": "ours-xl"},
            f"preset ours-xl: its names are those of sdxl U-Nets, but model_id_or_dir {sd15} is "
            "sd15-shaped (its presets: legacy-v1.5, ours-v1.5)",
            ["--preset", "ours-xl"],
        ),
        "layers": (
            {"layers": ["unet-in", "unet-in"]},
            "layers: duplicate names ['unet-in']",
            ["--layers", "unet-in,unet-in"],
        ),
        "device": (
            {"device": "tpu"},
            "device tpu: expected cpu, cuda, cuda:N or mps (available: cpu)",
            ["--device", "tpu"],
        ),
    }
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "img.png")
    for keywords, message, flags in cases.values():
        with pytest.raises(ValueError) as info:
            FeatureExtractor.from_pretrained(sd15, **keywords)
        assert str(info.value) == message
        argv = ["extract", str(tmp_path / "img.png"), "--model", str(sd15), *flags,
                "-o", str(tmp_path / "out.safetensors")]  # fmt: skip
        assert main(argv) == 2
        cli = message.replace("model_id_or_dir", "--model")
        for argument in ("timestep", "seed", "preset", "layers", "device"):
            cli = (
                cli.replace(f"{argument}", f"--{argument}", 1) if cli.startswith(argument) else cli
            )
        assert capsys.readouterr().err == f"diffeat extract: error: {cli}\n"


def test_a_missing_local_folder_is_named(tmp_path, monkeypatch, capsys, no_weights):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        FeatureExtractor.from_pretrained("./nope_dir")
    expected = f"model_id_or_dir: no model folder ./nope_dir (nothing at {tmp_path}/nope_dir)"
    assert str(info.value) == expected
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "img.png")
    assert main(["extract", "img.png", "--model", "./nope_dir", "-o", "o.safetensors"]) == 2
    cli = expected.replace("model_id_or_dir", "--model")
    assert capsys.readouterr().err == f"diffeat extract: error: {cli}\n"


def test_an_unreachable_hub_is_said_at_once(tmp_path, monkeypatch, capsys, no_weights):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    asked = []
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: asked.append(a))
    expected = (
        f"org/model is not in the local hub cache ({tmp_path / 'hub'}) and HF_HUB_OFFLINE is "
        f"set, so the hub is not asked; {ADVICE}"
    )
    with pytest.raises(HubUnreachableError) as info:
        FeatureExtractor.from_pretrained("org/model")
    assert str(info.value) == expected and isinstance(info.value, OSError)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "img.png")
    argv = ["extract", str(tmp_path / "img.png"), "--model", "org/model",
            "-o", str(tmp_path / "o.safetensors")]  # fmt: skip
    assert main(argv) == 1
    assert capsys.readouterr().err == f"diffeat extract: error: {expected}\n"
    assert asked == [] and not (tmp_path / "o.safetensors").exists()


def test_no_connection_is_said_within_5_s(tmp_path, monkeypatch, no_weights):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    tried = unreachable_hub(monkeypatch)
    with pytest.raises(HubUnreachableError) as info:
        FeatureExtractor.from_pretrained("org/model")
    assert str(info.value) == (
        "cannot reach the Hugging Face hub (huggingface.co) for org/model within 5 s "
        f"(TimeoutError: timed out); {ADVICE}"
    )
    assert tried == [(("huggingface.co", 443), 5.0)]


@pytest.mark.parametrize(
    ("config", "heads", "most"),
    [("sd15", 8, 2**29 * 64 - 64), ("sdxl", 20, 21731006592)],
)
def test_image_size_is_bounded_by_the_shape_pass(config, heads, most):
    """A size whose attention scores torch cannot describe is refused in one line naming
    ``image_size``, by the listing's check and by the shape pass itself (it overflowed in
    torch); the largest accepted size passes the check."""
    from common_kernels.runtime.errors import InvalidValue
    from diffeat.configs import unet_config
    from diffeat.listing import check_listing, list_layers
    from diffeat.shapes import check_pass_size

    message = (
        f"image_size 8000000x8000000: at most {most} px (H x W) for this model: its attention "
        f"scores ({heads} heads x (H x W / 64)^2 float32 values) would exceed torch's largest "
        "tensor (2^63 bytes)"
    )
    for refuse in (
        lambda: check_listing(config, image_size=(8000000, 8000000)),
        lambda: list_layers(unet_config(config), (8000000, 8000000)),
    ):
        with pytest.raises(InvalidValue) as refused:
            refuse()
        assert (refused.value.argument, str(refused.value)) == ("image_size", message)
    check_pass_size(unet_config(config), 8, most // 8)
    with pytest.raises(InvalidValue):
        check_pass_size(unet_config(config), 8, most // 8 + 8)
