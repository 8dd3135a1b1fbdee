"""The repository's loader rule in itaclip (issue 25, item 3): a path is a local folder and a
missing one is named at once; anything else is a hub id, and a hub that cannot be reached is
said within seconds, before open_clip (or transformers) asks for anything."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
from PIL import Image

from common_kernels.runtime.hub import HubUnreachableError
from common_kernels.runtime.testing import unreachable_hub
from itaclip import Segmenter
from itaclip.cli import main
from itaclip.sources import ModelLoadError, ModelSource, resolve_model

OPENAI_REPO = "timm/vit_base_patch16_clip_224.openai"  # open_clip's hf_hub of ViT-B-16 openai
DEFAULT = "ViT-B-16-quickgelu (pretrained 'openai')"  # the default model, as messages name it
ADVICE = "download it on a machine with network access, or give a local folder (./DIR)"


def offline_message(what: str, repo: str, cache) -> str:
    return (
        f"cannot load {what}: {repo} is not in the local hub cache ({cache}) and HF_HUB_OFFLINE "
        f"is set, so the hub is not asked; {ADVICE}"
    )


@pytest.fixture
def offline(tmp_path, monkeypatch) -> list:
    """HF_HUB_OFFLINE with an empty hub cache; every download and model build is recorded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    asked: list = []

    def record(name):
        def recorded(*args, **kwargs):
            asked.append((name, args, kwargs))
            raise RuntimeError(f"{name} was called")

        return recorded

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", record("hf_hub_download"))
    monkeypatch.setattr(open_clip, "create_model", record("create_model"))
    monkeypatch.setattr(open_clip, "get_tokenizer", record("get_tokenizer"))
    return asked


def test_resolve_model_follows_the_loader_rule(tmp_path, monkeypatch, tiny_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "clip").symlink_to(tiny_dir)
    local = ModelSource(f"local-dir:{tmp_path / 'clip'}")
    assert resolve_model("ViT-B-16-quickgelu", "openai") == ModelSource(
        "ViT-B-16-quickgelu", "openai", (OPENAI_REPO,)
    )
    assert resolve_model("ViT-B-16-quickgelu", "") == ModelSource("ViT-B-16-quickgelu")
    assert resolve_model("hf-hub:owner/name", "openai") == ModelSource(
        "hf-hub:owner/name", None, ("owner/name",)
    )  # the repository's own weights
    assert resolve_model("owner/name", None) == ModelSource(
        "hf-hub:owner/name", None, ("owner/name",)
    )
    assert resolve_model("clip", "openai") == ModelSource("local-dir:clip")  # an existing folder
    assert resolve_model("./clip", None) == ModelSource("local-dir:clip")
    assert resolve_model("~/clip", None) == local
    assert resolve_model(f"local-dir:{tmp_path / 'clip'}", None) == local
    with pytest.raises(FileNotFoundError) as info:
        resolve_model("~/nope_dir", None)
    nothing = f"nothing at {tmp_path}/nope_dir"
    assert str(info.value) == f"model_name: no model folder ~/nope_dir ({nothing})"
    with pytest.raises(ValueError) as info:
        resolve_model("hf-hub:no_owner", None)
    assert str(info.value) == "model_name 'hf-hub:no_owner': expected hf-hub:owner/name"
    assert resolve_model("ViT-B-16-quickgelu", "openai").cache_id == "ViT-B-16-quickgelu|openai"
    assert local.cache_id is None  # folders are identified by a fingerprint of their weights


def test_from_pretrained_offline_fails_at_once_without_a_download(tmp_path, offline):
    cache = tmp_path / "hub"
    cases = {
        "ViT-B-16-quickgelu": offline_message(DEFAULT, OPENAI_REPO, cache),
        "hf-hub:owner/name": offline_message("hf-hub:owner/name", "owner/name", cache),
        "owner/name": offline_message("hf-hub:owner/name", "owner/name", cache),
    }
    for model_name, message in cases.items():
        with pytest.raises(HubUnreachableError) as info:
            Segmenter.from_pretrained(model_name, cache_dir=tmp_path / "text")
        assert str(info.value) == message
        assert isinstance(info.value, OSError)
    assert offline == []  # no download attempted, no model built


def test_segment_offline_exits_1_with_the_same_line(tmp_path, offline, capsys):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    argv = ["segment", str(tmp_path / "img.png"), "--classes", "cat,dog", "-o",
            str(tmp_path / "out"), "--cache-dir", str(tmp_path / "text")]  # fmt: skip
    assert main(argv) == 1
    message = offline_message(DEFAULT, OPENAI_REPO, tmp_path / "hub")
    captured = capsys.readouterr()
    assert captured.err == f"itaclip segment: error: {message}\n"
    assert captured.out == "" and offline == []
    assert not (tmp_path / "out").exists()


def test_segment_with_a_missing_folder_names_it_exit_2(tmp_path, offline, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    argv = ["segment", "img.png", "--classes", "cat", "-o", "out", "--model", "./nope_dir"]
    assert main(argv) == 2
    expected = f"--model: no model folder ./nope_dir (nothing at {tmp_path}/nope_dir)"
    assert capsys.readouterr().err == f"itaclip segment: error: {expected}\n"
    with pytest.raises(FileNotFoundError) as info:
        Segmenter.from_pretrained("./nope_dir")
    assert str(info.value) == expected.replace("--model", "model_name")
    assert offline == []


def test_no_connection_is_said_within_the_timeout(tmp_path, monkeypatch, capsys, offline):
    tried = unreachable_hub(monkeypatch)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    argv = ["segment", str(tmp_path / "img.png"), "--classes", "cat", "-o",
            str(tmp_path / "out"), "--cache-dir", str(tmp_path / "text")]  # fmt: skip
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"itaclip segment: error: cannot load {DEFAULT}: cannot "
        f"reach the Hugging Face hub (huggingface.co) for {OPENAI_REPO} within 5 s "
        f"(TimeoutError: timed out); {ADVICE}\n"
    )
    assert tried == [(("huggingface.co", 443), 5.0)] and offline == []


def test_a_cached_repository_goes_on_to_open_clip(tmp_path, offline):
    (tmp_path / "hub" / f"models--{OPENAI_REPO.replace('/', '--')}" / "snapshots" / "a1").mkdir(
        parents=True
    )
    with pytest.raises(ModelLoadError) as info:
        Segmenter.from_pretrained(cache_dir=tmp_path / "text")
    assert str(info.value) == f"cannot load {DEFAULT}: create_model was called"
    assert [(name, args) for name, args, _ in offline] == [
        ("create_model", ("ViT-B-16-quickgelu",))
    ]
    assert offline[0][2]["pretrained"] == "openai"


def test_the_language_model_offline(tmp_path, offline, capsys, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from itaclip.generate import AuxTextGenerator

    def recorded(*args, **kwargs):
        offline.append(("transformers", args, kwargs))
        raise RuntimeError("transformers was called")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", recorded)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recorded)
    message = offline_message("owner/lm", "owner/lm", tmp_path / "hub")
    with pytest.raises(HubUnreachableError) as info:
        AuxTextGenerator.from_pretrained("owner/lm")
    assert str(info.value) == message
    argv = ["aux", "--lm", "owner/lm", "--classes", "cat", "-o", str(tmp_path / "aux.json")]
    assert main(argv) == 1
    assert capsys.readouterr().err == f"itaclip aux: error: {message}\n"
    assert offline == [] and not (tmp_path / "aux.json").exists()
