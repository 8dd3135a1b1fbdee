"""The repository's loader rule in pixelsmith (issue 25, item 1): a path is a local folder and a
missing one is named at once; anything else is a hub id, and a hub that cannot be reached is
said within 5 s, before diffusers asks for anything. For the pipeline, the VAE, LoRAs and the
ControlNet, through the API and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionXLPipeline
from PIL import Image

from common_kernels.runtime.errors import InvalidArgument, InvalidValue, MissingPath
from common_kernels.runtime.hub import HubUnreachableError
from common_kernels.runtime.testing import unreachable_hub
from pixelsmith import PixelsmithPipeline
from pixelsmith.cli import main
from pixelsmith.control import load_controlnet
from pixelsmith.lora import load_loras
from pixelsmith.sources import DEFAULT_MODEL, DEFAULT_VAE, check_from_pretrained

ADVICE = "download it on a machine with network access, or give a local folder (./DIR)"
# common_kernels.runtime.hub.resolve_model_name: the one unknown-model rule of every package
UNKNOWN_ADVICE = "a local folder starts with ./ or / (or exists), a hub id is owner/name"
PREFIX = "pixelsmith generate: error: "


def offline_message(what: str, repo: str, cache: Path) -> str:
    return (
        f"cannot load {what} {repo}: {repo} is not in the local hub cache ({cache}) and "
        f"HF_HUB_OFFLINE is set, so the hub is not asked; {ADVICE}"
    )


@pytest.fixture
def offline(tmp_path, monkeypatch) -> list:
    """HF_HUB_OFFLINE with an empty hub cache under tmp_path; every diffusers load is recorded
    (and fails), so a test sees whether the rule let anything through."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    asked: list = []

    def record(name):
        def recorded(cls, *args, **kwargs):
            asked.append((name, args))
            raise RuntimeError(f"{name} was called")

        return classmethod(recorded)

    monkeypatch.setattr(StableDiffusionXLPipeline, "from_pretrained", record("pipeline"))
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", record("vae"))
    monkeypatch.setattr(ControlNetModel, "from_pretrained", record("controlnet"))
    return asked


def test_a_missing_local_folder_is_named_at_once(tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("not a model")
    (tmp_path / "photos").mkdir()
    cases = {
        ("./nope_dir", "auto"): (
            MissingPath,
            f"pretrained_model_name_or_path: no model folder ./nope_dir (nothing at "
            f"{tmp_path}/nope_dir)",
        ),
        ("~/nope_dir", "auto"): (
            MissingPath,
            f"pretrained_model_name_or_path: no model folder ~/nope_dir (nothing at "
            f"{Path.home()}/nope_dir)",
        ),
        ("file.txt", "auto"): (
            InvalidValue,
            "pretrained_model_name_or_path file.txt is a file; expected a hub id (owner/name) "
            "or a folder",
        ),
        ("photos", "auto"): (
            InvalidValue,
            "pretrained_model_name_or_path photos: no model_index.json in the folder (not a "
            "diffusers folder)",
        ),
        ("a/b/c", "auto"): (
            InvalidArgument,
            f"pretrained_model_name_or_path: unknown model 'a/b/c': {UNKNOWN_ADVICE}",
        ),
        ("no_such_model", "auto"): (
            InvalidArgument,
            f"pretrained_model_name_or_path: unknown model 'no_such_model': {UNKNOWN_ADVICE}",
        ),
        ("org/sdxl", "no_such_vae"): (
            InvalidArgument,
            f"vae: unknown model 'no_such_vae': {UNKNOWN_ADVICE}",
        ),
        ("org/a--b", "auto"): (  # not a hub id by the hub's own rule: an unknown model
            InvalidArgument,
            f"pretrained_model_name_or_path: unknown model 'org/a--b': {UNKNOWN_ADVICE}",
        ),
        ("org/sdxl", "./no_vae"): (
            MissingPath,
            f"vae: no VAE folder ./no_vae (nothing at {tmp_path}/no_vae)",
        ),
    }
    for (model, vae), (kind, message) in cases.items():
        with pytest.raises(kind) as info:
            PixelsmithPipeline.from_pretrained(model, vae=vae)
        assert type(info.value) is kind and str(info.value) == message
    assert offline == []  # nothing was sent to diffusers, nor to the hub


def test_check_from_pretrained_reads_sources_offline(tiny_dir):
    sdxl = check_from_pretrained()
    assert (sdxl.model, sdxl.vae) == (DEFAULT_MODEL, DEFAULT_VAE)  # vae="auto": the fp16 fix
    assert check_from_pretrained("org/sdxl").vae is None  # auto: the model's own VAE
    local = check_from_pretrained(tiny_dir, "org/vae")
    assert (local.model, local.vae) == (tiny_dir, "org/vae")
    assert local.shape.train_timesteps == 1000 and local.shape.vae_scale_factor == 8


def test_hub_ids_offline_fail_at_once_without_a_download(tmp_path, tiny_dir, offline):
    cache = tmp_path / "hf" / "hub"
    cases = {
        ("org/sdxl", "auto"): offline_message("the model", "org/sdxl", cache),
        (DEFAULT_MODEL, "auto"): offline_message("the model", DEFAULT_MODEL, cache),
        (str(tiny_dir), "org/vae"): offline_message("the VAE", "org/vae", cache),
    }
    for (model, vae), message in cases.items():
        with pytest.raises(HubUnreachableError) as info:
            PixelsmithPipeline.from_pretrained(model, vae=vae)
        assert str(info.value) == message
        assert isinstance(info.value, OSError)
    with pytest.raises(HubUnreachableError) as info:
        load_controlnet("org/cn")
    assert str(info.value) == offline_message("the ControlNet", "org/cn", cache)
    assert offline == []


def test_a_lora_hub_id_offline_fails_before_any_weight_changes(tmp_path, make_pipe, offline):
    pipe = make_pipe()
    before = {name: value.clone() for name, value in pipe.unet.state_dict().items()}
    with pytest.raises(HubUnreachableError) as info:
        pipe.load_lora_weights("org/lora")
    assert str(info.value) == offline_message("the LoRA", "org/lora", tmp_path / "hf" / "hub")
    with pytest.raises(FileNotFoundError, match=r"^lora: no LoRA file or folder ./nope\.safet"):
        pipe.load_lora_weights("./nope.safetensors")
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys()
    assert all(after[name].equal(value) for name, value in before.items())


def test_a_cached_repository_goes_on_to_diffusers(tmp_path, offline):
    snapshot = tmp_path / "hf" / "hub" / "models--org--sdxl" / "snapshots" / "a1"
    snapshot.mkdir(parents=True)
    with pytest.raises(RuntimeError, match=r"^pipeline was called$"):
        PixelsmithPipeline.from_pretrained("org/sdxl")
    assert offline == [("pipeline", ("org/sdxl",))]


def test_no_connection_is_said_within_the_timeout(tmp_path, monkeypatch, offline, capsys):
    tried = unreachable_hub(monkeypatch)
    message = (
        "cannot load the model org/sdxl: cannot reach the Hugging Face hub (huggingface.co) for "
        f"org/sdxl within 5 s (TimeoutError: timed out); {ADVICE}"
    )
    with pytest.raises(HubUnreachableError) as info:
        PixelsmithPipeline.from_pretrained("org/sdxl")
    assert str(info.value) == message
    argv = ["generate", "a cat", "--model", "org/sdxl", "--sizes", "1024", "--device", "cpu",
            "-o", str(tmp_path / "out.tif")]  # fmt: skip
    assert main(argv) == 1
    assert capsys.readouterr().err == f"{PREFIX}{message}\n"
    assert tried == [(("huggingface.co", 443), 5.0)] * 2 and offline == []


CLI_CASES = {
    "model_hub_id": (["--model", "org/sdxl"], 1, "the model", "org/sdxl"),
    "default_model": ([], 1, "the model", DEFAULT_MODEL),
    "vae_hub_id": (["--model", "{tiny}", "--vae", "org/vae"], 1, "the VAE", "org/vae"),
    "lora_hub_id": (["--model", "{tiny}", "--lora", "org/lora"], 1, "the LoRA", "org/lora"),
    "controlnet_hub_id": (
        ["--model", "{tiny}", "--controlnet", "org/cn", "--control-image", "{t}/cond.png"],
        1,
        "the ControlNet",
        "org/cn",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_generate_offline_exits_1_with_the_api_line(case, tmp_path, tiny_dir, offline, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "cond.png")
    extra, status, what, repo = CLI_CASES[case]
    extra = [a.replace("{tiny}", str(tiny_dir)).replace("{t}", str(tmp_path)) for a in extra]
    argv = ["generate", "a cat", "--sizes", "1024", "--device", "cpu", "-o",
            str(tmp_path / "out.tif"), *extra]  # fmt: skip
    assert main(argv) == status
    captured = capsys.readouterr()
    message = offline_message(what, repo, tmp_path / "hf" / "hub")
    assert captured.err == f"{PREFIX}{message}\n" and captured.out == ""
    assert offline == []  # failed before the SDXL model was loaded
    assert [path.name for path in tmp_path.iterdir() if path.name != "hf"] == ["cond.png"]


def test_generate_with_a_missing_folder_names_it_exit_2(tmp_path, monkeypatch, offline, capsys):
    monkeypatch.chdir(tmp_path)
    for flag, what in (("--model", "model folder"), ("--vae", "VAE folder")):
        argv = ["generate", "a cat", "--sizes", "1024", "-o", "out.tif", flag, "./nope_dir"]
        assert main(argv) == 2
        expected = f"{flag}: no {what} ./nope_dir (nothing at {tmp_path}/nope_dir)"
        assert capsys.readouterr().err == f"{PREFIX}{expected}\n"
    argv = ["generate", "a cat", "--sizes", "1024", "-o", "out.tif", "--lora", "./nope.bin"]
    assert main(argv) == 2
    expected = f"--lora: no LoRA file or folder ./nope.bin (nothing at {tmp_path}/nope.bin)"
    assert capsys.readouterr().err == f"{PREFIX}{expected}\n"
    assert offline == [] and [path.name for path in tmp_path.iterdir() if path.name != "hf"] == []


@pytest.fixture
def no_network(monkeypatch, offline) -> list:
    """``offline`` without HF_HUB_OFFLINE, and any connection attempt fails the test."""
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def connect(*args, **kwargs):
        raise AssertionError(f"the hub was asked: {args}")

    monkeypatch.setattr("socket.create_connection", connect)
    return offline


def test_an_unknown_name_is_refused_at_once_in_the_api(make_pipe, no_network):
    """Neither a path nor owner/name: an unknown model, said at once (never a hub failure)."""
    pipe = make_pipe()
    cases = [
        (lambda: PixelsmithPipeline.from_pretrained("no_such_model"),
         "pretrained_model_name_or_path"),
        (lambda: PixelsmithPipeline.from_pretrained(DEFAULT_MODEL, vae="no_such_model"), "vae"),
        (lambda: check_from_pretrained("no_such_model"), "pretrained_model_name_or_path"),
        (lambda: pipe.load_lora_weights("no_such_model"), "lora"),
        (lambda: load_loras(pipe, ["no_such_model"]), "loras"),
        (lambda: load_controlnet("no_such_model"), "controlnet"),
    ]  # fmt: skip
    for call, argument in cases:
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.argument == argument
        assert str(info.value) == f"{argument}: unknown model 'no_such_model': {UNKNOWN_ADVICE}"
    assert no_network == []


UNKNOWN_CASES = {
    "--model": ["--model", "no_such_model"],
    "--vae": ["--vae", "no_such_model"],
    "--lora": ["--model", "{tiny}", "--lora", "no_such_model"],
    "--controlnet": ["--model", "{tiny}", "--controlnet", "no_such_model", "--control-image",
                     "{t}/cond.png"],
}  # fmt: skip


@pytest.mark.parametrize("flag", sorted(UNKNOWN_CASES))
def test_generate_names_an_unknown_model_by_its_flag(flag, tmp_path, tiny_dir, no_network, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "cond.png")
    extra = [a.replace("{tiny}", str(tiny_dir)).replace("{t}", str(tmp_path))
             for a in UNKNOWN_CASES[flag]]  # fmt: skip
    argv = ["generate", "a cat", "--sizes", "1024", "--device", "cpu", "-o",
            str(tmp_path / "out.tif"), *extra]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    expected = f"{PREFIX}{flag}: unknown model 'no_such_model': {UNKNOWN_ADVICE}\n"
    assert captured.err == expected and captured.out == ""
    assert no_network == []  # nothing loaded, the hub not asked
    assert [path.name for path in tmp_path.iterdir() if path.name != "hf"] == ["cond.png"]
