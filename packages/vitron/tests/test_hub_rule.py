"""The repository's loader rule in vitron (issue 25, item 5): a name that looks like a path is a
local folder and a missing one is a ``FileNotFoundError`` naming it, at once; anything else is a
hub id, and a hub that cannot be reached is said at once (no download, no retry wait), before
huggingface_hub asks."""

from __future__ import annotations

import time

import huggingface_hub
import pytest

from common_kernels.runtime.hub import HubUnreachableError
from vitron.cli import main
from vitron.models import VitronModel
from vitron.training import train

ADVICE = "download it on a machine with network access, or give a local folder (./DIR)"


@pytest.fixture
def offline(tmp_path, monkeypatch) -> list:
    """HF_HUB_OFFLINE with an empty hub home; every download (it fails) and every wait (a
    retry's back-off: ``time.sleep``) is recorded, so ``offline == []`` says the error came at
    once, without a timed assertion."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    asked: list = []

    def record(*args, **kwargs):
        asked.append((args, kwargs))
        raise RuntimeError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", record)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", record)
    monkeypatch.setattr(time, "sleep", lambda seconds: asked.append(("time.sleep", seconds)))
    return asked


def offline_message(name: str, tmp_path) -> str:
    return (
        f"cannot load {name} owner/vitron-7b: owner/vitron-7b is not in the local hub cache "
        f"({tmp_path / 'hf' / 'hub'}) and HF_HUB_OFFLINE is set, so the hub is not asked; {ADVICE}"
    )


def test_api_missing_folder_and_unreachable_hub(tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        VitronModel.from_pretrained("./nope/model")
    assert str(missing.value) == (
        f"model: no Vitron folder ./nope/model (nothing at {tmp_path / 'nope' / 'model'})"
    )
    with pytest.raises(HubUnreachableError) as unreachable:
        VitronModel.from_pretrained("owner/vitron-7b")
    assert str(unreachable.value) == offline_message("model", tmp_path)
    (tmp_path / "data.jsonl").write_text("{}\n")
    with pytest.raises(HubUnreachableError) as training:
        train("owner/vitron-7b", tmp_path / "data.jsonl", tmp_path / "out", stage=1)
    assert str(training.value) == offline_message("model", tmp_path)
    assert offline == []  # the hub was never asked


@pytest.mark.parametrize("command", ["run", "train"])
def test_cli_missing_folder_exit_2_unreachable_hub_exit_1(
    tmp_path, monkeypatch, capsys, offline, command
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text("{}\n")
    rest = {
        "run": ["x", "-o", str(tmp_path / "out")],
        "train": ["--data", str(tmp_path / "data.jsonl"), "--stage", "1", "-o", "out"],
    }[command]
    assert main([command, "--model", "./nope/model", *rest]) == 2
    assert capsys.readouterr().err == (
        f"vitron {command}: error: --model: no Vitron folder ./nope/model "
        f"(nothing at {tmp_path / 'nope' / 'model'})\n"
    )
    assert main([command, "--model", "owner/vitron-7b", *rest]) == 1
    assert capsys.readouterr().err == (
        f"vitron {command}: error: {offline_message('--model', tmp_path)}\n"
    )
    assert offline == [] and not (tmp_path / "out").exists()


def unreachable(label: str, repo: str, tmp_path) -> str:
    return (
        f"cannot load {label} {repo}: {repo} is not in the local hub cache "
        f"({tmp_path / 'hf' / 'hub'}) and HF_HUB_OFFLINE is set, so the hub is not asked; {ADVICE}"
    )


@pytest.mark.parametrize(
    ("name", "repo"),
    [
        ("openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14"),
        ("open_clip:hf-hub:owner/clip", "owner/clip"),
        # a built-in tag whose weights open_clip downloads from this hub repository
        ("open_clip:ViT-B-16/openai", "timm/vit_base_patch16_clip_224.openai"),
    ],
)
def test_vision_tower_follows_the_rule(tmp_path, monkeypatch, offline, name, repo):
    from vitron.models.vision import VisionTower

    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubUnreachableError) as caught:
        VisionTower.from_pretrained(name)
    assert str(caught.value) == unreachable("vision", repo, tmp_path)
    assert offline == []


def test_missing_local_parts_are_named(tmp_path, monkeypatch, offline):
    from vitron.models.vision import VisionTower

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as tower:
        VisionTower.from_pretrained("./clip")
    assert (
        str(tower.value) == f"vision: no CLIP vision folder ./clip (nothing at {tmp_path / 'clip'})"
    )
    with pytest.raises(FileNotFoundError) as open_clip_dir:
        VisionTower.from_pretrained("open_clip:local-dir:clip")
    assert str(open_clip_dir.value) == (
        f"vision: no open_clip folder clip (nothing at {tmp_path / 'clip'})"
    )
    with pytest.raises(FileNotFoundError) as llm:
        VitronModel.from_components("./vicuna", vision="open_clip:ViT-B-16/openai")
    assert str(llm.value) == f"llm: no causal LM folder ./vicuna (nothing at {tmp_path / 'vicuna'})"
    with pytest.raises(HubUnreachableError) as hub_llm:
        VitronModel.from_components("lmsys/vicuna-7b-v1.5")
    assert str(hub_llm.value) == unreachable("llm", "lmsys/vicuna-7b-v1.5", tmp_path)
    assert offline == []


@pytest.mark.parametrize("kind", ["text2image", "inpaint", "any"])
def test_specialist_pipelines_follow_the_rule(tmp_path, monkeypatch, offline, kind):
    import torch

    from vitron.specialists.diffusion import load_pipeline

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        load_pipeline(kind, "./sdxl", torch.float32, torch.device("cpu"))
    assert str(missing.value) == (
        f"model: no diffusers pipeline folder ./sdxl (nothing at {tmp_path / 'sdxl'})"
    )
    with pytest.raises(HubUnreachableError) as caught:
        load_pipeline(kind, "owner/sdxl", torch.float32, torch.device("cpu"))
    assert str(caught.value) == unreachable("model", "owner/sdxl", tmp_path)
    assert offline == []


UNKNOWN = "a local folder starts with ./ or / (or exists), a hub id is owner/name"


def test_a_name_that_is_neither_a_path_nor_a_hub_id_is_an_unknown_model(
    tmp_path, monkeypatch, capsys, offline
):
    """Issue 33: ``no_such_model`` was sent to the hub and reported as unreachable; it is an
    unknown model at once (``common_kernels.runtime.hub.resolve_model_name``), in the API and the
    CLI."""
    import torch

    from common_kernels.runtime.errors import InvalidArgument
    from vitron.specialists.diffusion import load_pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text("{}\n")
    calls = {
        "model": lambda: VitronModel.from_pretrained("no_such_model"),
        "llm": lambda: VitronModel.from_components("no_such_model"),
        "vision": lambda: VitronModel.from_components("./", vision="no_such_model"),
        "pipeline": lambda: load_pipeline("any", "no_such_model", torch.float32, "cpu"),
        "train": lambda: train("no_such_model", tmp_path / "data.jsonl", tmp_path / "o", stage=1),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidArgument) as caught:
            call()
        argument = {"llm": "llm", "vision": "vision"}.get(name, "model")
        assert str(caught.value) == f"{argument}: unknown model 'no_such_model': {UNKNOWN}", name
    train_rest = ["--data", "data.jsonl", "--stage", "1", "-o", "out"]
    for command, rest in [("run", ["x", "-o", "out"]), ("train", train_rest)]:
        assert main([command, "--model", "no_such_model", *rest]) == 2
        assert capsys.readouterr().err == (
            f"vitron {command}: error: --model: unknown model 'no_such_model': {UNKNOWN}\n"
        )
    assert offline == [] and not (tmp_path / "out").exists()
