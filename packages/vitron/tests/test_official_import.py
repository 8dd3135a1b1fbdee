"""Import of the released checkpoint's format (issue 51, item 1), on tiny checkpoints written
here in the release's file set and key layout, against an independent re-statement of the
LLaVA forward: the tower's select-layer patch features without the class token, the
Linear-GELU-Linear projector, the image rows spliced at the image placeholder, the LLaMA's
logits with the LoRA update W + (alpha / r) B A merged by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitron.cli import main
from vitron.models.official import VICUNA_SYSTEM, check_official
from vitron.models.vitron import VitronModel
from vitron.processing import Message
from vitron.regions import Box, Region

TOWER = {
    "image_size": 32, "patch_size": 8, "hidden_size": 24, "intermediate_size": 48,
    "num_hidden_layers": 3, "num_attention_heads": 4, "hidden_act": "quick_gelu",
}  # fmt: skip
RANK, ALPHA = 4, 8


def _llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def write_release(root: Path, write_tokenizer, shards: str = "bin") -> dict:
    """Tiny base, LoRA and LanguageBind_Image folders; returns their tensors for the oracle.
    ``write_tokenizer(folder)`` writes the base's tokenizer files (conftest's real
    sentencepiece LLaMA tokenizer: ``tokenizer.model``, its config without ``legacy``)."""
    from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    base, lora, tower = root / "vitron-base", root / "vitron-lora", root / "LanguageBind_Image"
    for folder in (base, lora, tower):
        folder.mkdir(parents=True)
    write_tokenizer(base)
    llm = _llama(len(AutoTokenizer.from_pretrained(str(base))))
    config = {**llm.config.to_dict(), "model_type": "llava_llama",
              "architectures": ["LlavaLlamaForCausalLM"], "mm_hidden_size": 24,
              "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
              "mm_vision_select_feature": "patch", "mm_use_im_start_end": False,
              "mm_use_im_patch_token": False, "image_aspect_ratio": "pad",
              "mm_image_tower": "LanguageBind/LanguageBind_Image",
              "mm_video_tower": "LanguageBind/LanguageBind_Video_merge"}  # fmt: skip
    (base / "config.json").write_text(json.dumps(config))
    (lora / "config.json").write_text(json.dumps(config))
    extra = {}
    for prefix, shapes in (
        ("model.mm_projector.", {"0": (32, 24), "2": (32, 32)}),
        ("model.region_extractor.region_linear.layers.", {"0": (32, 24), "1": (32, 32),
                                                          "2": (32, 32)}),
        ("model.region_extractor.loc_encoder.loc_encoder.", {"0": (16, 4), "2": (32, 16)}),
    ):  # fmt: skip
        for index, shape in shapes.items():
            extra[f"{prefix}{index}.weight"] = torch.randn(shape) * 0.2
            extra[f"{prefix}{index}.bias"] = torch.randn(shape[0]) * 0.2
    state = {k: v.clone() for k, v in llm.state_dict().items()}
    base_state = {**state, **{k: torch.zeros_like(v) for k, v in extra.items()}}  # stale
    names = sorted(base_state)
    halves = (names[: len(names) // 2], names[len(names) // 2 :])
    ext = "bin" if shards == "bin" else "safetensors"
    weight_map = {}
    for i, part in enumerate(halves):
        shard = f"{'pytorch_model' if ext == 'bin' else 'model'}-0000{i + 1}-of-00002.{ext}"
        tensors = {k: base_state[k].contiguous() for k in part}
        if ext == "bin":
            torch.save(tensors, base / shard)
        else:
            from safetensors.torch import save_file

            save_file(tensors, str(base / shard))
        weight_map.update(dict.fromkeys(part, shard))
    index = "pytorch_model.bin.index.json" if ext == "bin" else "model.safetensors.index.json"
    (base / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    adapter = {}
    for layer in range(2):
        for proj, out in (("q_proj", 32), ("v_proj", 16)):
            stem = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            adapter[f"{stem}.lora_A.weight"] = torch.randn(RANK, 32) * 0.3
            adapter[f"{stem}.lora_B.weight"] = torch.randn(out, RANK) * 0.3
    torch.save(adapter, lora / "adapter_model.bin")
    (lora / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA,
         "target_modules": ["q_proj", "v_proj"]}))  # fmt: skip
    torch.save({f"base_model.model.{k}": v for k, v in extra.items()},
               lora / "non_lora_trainables.bin")  # fmt: skip
    clip = CLIPVisionModel(CLIPVisionConfig(**TOWER)).eval()
    tower_state = {k: v.clone() for k, v in clip.state_dict().items()}
    # LanguageBind_Image keeps the CLIP vision tensors under vision_model.
    released = {
        "vision_model." + k.removeprefix("vision_model."): v for k, v in tower_state.items()
    }
    junk = {
        "text_model.embeddings.token_embedding.weight": torch.randn(8, 4),
        "logit_scale": torch.tensor(1.0),
        "visual_projection.weight": torch.randn(4, 24),
    }
    torch.save({**released, **junk}, tower / "pytorch_model.bin")  # fmt: skip
    (tower / "config.json").write_text(
        json.dumps(
            {
                "model_type": "LanguageBindImage",
                "text_config": {"hidden_size": 4},
                "vision_config": {**TOWER, "lora_r": 0, "add_time_attn": False, "num_frames": 1},
            }
        )
    )
    return {"llm": state, "extra": extra, "adapter": adapter, "tower": tower_state,
            "base": base, "lora": lora, "tower_dir": tower}  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory, write_llama_tokenizer):
    return write_release(tmp_path_factory.mktemp("release"), write_llama_tokenizer)


def oracle_logits(release: dict, ids: torch.Tensor, pixels: torch.Tensor, image_id: int):
    """The LLaVA forward re-stated with transformers parts and hand-merged weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vocab = release["llm"]["model.embed_tokens.weight"].shape[0]
    llm = _llama(vocab)
    merged = {k: v.clone() for k, v in release["llm"].items()}
    for key, a in release["adapter"].items():
        if ".lora_A." in key:
            b = release["adapter"][key.replace("lora_A", "lora_B")]
            target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            merged[target] = merged[target] + (ALPHA / RANK) * b @ a
    llm.load_state_dict(merged)
    clip = CLIPVisionModel(CLIPVisionConfig(**TOWER)).eval()
    clip.load_state_dict(release["tower"])
    with torch.no_grad():
        hidden = clip(pixel_values=pixels[None], output_hidden_states=True).hidden_states
        patches = hidden[-2][0, 1:]  # select layer -2, class token dropped: (P, 24)
        e = release["extra"]
        rows = F.linear(patches, e["model.mm_projector.0.weight"], e["model.mm_projector.0.bias"])
        rows = F.linear(F.gelu(rows), e["model.mm_projector.2.weight"],
                        e["model.mm_projector.2.bias"])  # fmt: skip
        at = int((ids == image_id).nonzero()[0, 0])
        embed = llm.get_input_embeddings()
        before, after = embed(ids[:at]), embed(ids[at + 1 :])
        embeds = torch.cat([before, rows, after])[None]  # (1, L - 1 + P, 32)
        return llm(inputs_embeds=embeds).logits[0]


def test_import_matches_the_llava_forward(release, official_rule):
    model = VitronModel.from_official(release["base"], release["lora"], release["tower_dir"])
    image = Image.new("RGB", (40, 24), (200, 30, 90))
    sample = model.processor.sample(
        [Message("user", "<image>\nwhat is this?")], images=[image], add_generation_prompt=True
    )
    with torch.no_grad():
        spliced = model.splice([sample], truncate=False)
        logits = model.llm(inputs_embeds=spliced.inputs_embeds).logits[0]
    vocab = release["llm"]["model.embed_tokens.weight"].shape[0]
    expected = oracle_logits(release, sample.input_ids, sample.images[0], model.image_token_id)
    assert logits.shape[0] == expected.shape[0]
    torch.testing.assert_close(logits[:, :vocab], expected, atol=1e-5, rtol=0)
    # the release's chunked tokenisation, its tokenizer's legacy as transformers 4.31 read a
    # config without the key (True), kept in the config for the saved folder
    prompt = f"{VICUNA_SYSTEM} USER: <image>\nwhat is this? ASSISTANT:"
    expected_ids = official_rule(prompt, True, model.image_token_id, model.region_token_id)
    assert sample.input_ids.tolist() == expected_ids
    assert model.config.prompt_layout == "official" and model.config.region_token == "<objs>"
    assert model.config.tokenizer_options == {"legacy": True}
    assert model.config.vision.preprocess == "pad" and model.config.vision.select_layer == -2


def test_projector_and_region_extractor_parity(release):
    model = VitronModel.from_official(release["base"], release["lora"], release["tower_dir"])
    e = release["extra"]
    features = torch.randn(2, 16, 24)
    with torch.no_grad():
        rows = model.projector(features)
        fc1 = F.linear(features, e["model.mm_projector.0.weight"], e["model.mm_projector.0.bias"])
        hand = F.linear(F.gelu(fc1), e["model.mm_projector.2.weight"],
                        e["model.mm_projector.2.bias"])  # fmt: skip
        torch.testing.assert_close(rows, hand, atol=1e-6, rtol=0)
        # a box on the patch grid: the patches it touches, averaged; its pixels -> the MLP
        coverage = torch.zeros(2, 16)
        coverage[0, [0, 1, 4, 5]] = torch.tensor([1.0, 0.5, 0.25, 1.0])
        coverage[1, 15] = 0.1
        boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.75, 0.75, 1.0, 1.0]])
        got = model.region_encoder(features, coverage, boxes)

        def lin(x, name):
            return F.linear(x, e[name + ".weight"], e[name + ".bias"])

        pooled = torch.stack([features[0, [0, 1, 4, 5]].mean(0), features[1, 15]])
        r = "model.region_extractor.region_linear.layers."
        mlp = lin(F.relu(lin(F.relu(lin(pooled, r + "0")), r + "1")), r + "2")
        loc = "model.region_extractor.loc_encoder.loc_encoder."
        location = lin(F.relu(lin(boxes * 32, loc + "0")), loc + "2")  # pixels of the 32 px input
        torch.testing.assert_close(got, mlp + location, atol=1e-6, rtol=0)


def test_safetensors_shards_import(tmp_path, write_llama_tokenizer):
    release = write_release(tmp_path, write_llama_tokenizer, shards="safetensors")
    model = VitronModel.from_official(release["base"], release["lora"], release["tower_dir"])
    got = model.llm.state_dict()["model.layers.1.mlp.down_proj.weight"]
    assert torch.equal(got, release["llm"]["model.layers.1.mlp.down_proj.weight"])


def test_convert_official_command_writes_a_runnable_folder(release, tmp_path, capsys):
    out = tmp_path / "converted"
    code = main(["convert-official", str(release["base"]), "--lora", str(release["lora"]),
                 "--vision-tower", str(release["tower_dir"]), "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    loaded = VitronModel.from_pretrained(str(out))
    direct = VitronModel.from_official(release["base"], release["lora"], release["tower_dir"])
    for name, tensor in direct.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.config.region.style == "official"
    # the saved folder tokenises as the import does: the release's chunks, its legacy kept
    messages = [Message("user", "<image>\nwhat?"), Message("assistant", "a dog."),
                Message("user", "<objs> and here?")]  # fmt: skip
    image, box = Image.new("RGB", (32, 32)), Region(Box(0, 0, 8, 8))
    ids = [model.processor.sample(messages, [image], regions=[box]).input_ids.tolist()
           for model in (loaded, direct)]  # fmt: skip
    assert ids[0] == ids[1] and loaded.config.tokenizer_options == {"legacy": True}
    with pytest.raises(ValueError, match="this model takes no videos: an imported official"):
        frames = [Image.new("RGB", (32, 32))] * 2
        loaded.processor.sample([Message("user", "<video>\nhi")], videos=[frames])


def _copy(release: dict, tmp_path: Path) -> dict:
    shutil.copytree(release["base"].parent, tmp_path / "r")
    root = tmp_path / "r"
    return {"base": root / "vitron-base", "lora": root / "vitron-lora",
            "tower": root / "LanguageBind_Image"}  # fmt: skip


def _error(capsys, paths: dict, tmp_path: Path) -> str:
    """The one line ``convert-official`` of the copied release ``paths`` refuses it with."""
    argv = ["convert-official", str(paths["base"]), "--lora", str(paths["lora"]),
            "--vision-tower", str(paths["tower"]), "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    assert not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


INDEX, SECOND_SHARD = "pytorch_model.bin.index.json", "pytorch_model-00002-of-00002.bin"


@pytest.mark.parametrize(
    ("lost", "why"),
    [
        ([SECOND_SHARD], "listed in pytorch_model.bin.index.json"),
        # a gap in the numbering names the shard
        ([INDEX, SECOND_SHARD], "its numbering says it exists"),
    ],
    ids=["with_the_index", "without_the_index"],
)
def test_missing_shard(lost, why, release, tmp_path, capsys):
    paths = _copy(release, tmp_path)
    for name in lost:
        (paths["base"] / name).unlink()
    err = _error(capsys, paths, tmp_path)
    shard = paths["base"] / SECOND_SHARD
    assert err == f"vitron convert-official: error: BASE {shard}: missing shard ({why})"


def test_shards_without_their_index_import_the_same(release, tmp_path, capsys):
    """No index: every shard present is read, and the folder equals the one made with it."""
    paths = _copy(release, tmp_path)
    (paths["base"] / INDEX).unlink()
    argv = ["convert-official", str(paths["base"]), "--lora", str(paths["lora"]),
            "--vision-tower", str(paths["tower"]), "-o"]  # fmt: skip
    assert main([*argv, str(tmp_path / "without")]) == 0
    assert main([*argv[:1], str(release["base"]), *argv[2:], str(tmp_path / "with")]) == 0
    from safetensors.torch import load_file

    written = sorted(p.relative_to(tmp_path / "with") for p in (tmp_path / "with").rglob("*"))
    assert written == sorted(
        p.relative_to(tmp_path / "without") for p in (tmp_path / "without").rglob("*")
    )
    weights = [p for p in written if p.suffix == ".safetensors"]
    assert weights
    for name in weights:
        a, b = load_file(str(tmp_path / "without" / name)), load_file(str(tmp_path / "with" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_tensor_no_shard_has_without_the_index(release, tmp_path, capsys):
    """The only shard left, numbered as the only one: the first tensor it lacks is named."""
    paths = _copy(release, tmp_path)
    (paths["base"] / INDEX).unlink()
    (paths["base"] / SECOND_SHARD).unlink()
    first = paths["base"] / "pytorch_model-00001-of-00002.bin"
    first.rename(paths["base"] / "pytorch_model-00001-of-00001.bin")
    err = _error(capsys, paths, tmp_path)
    assert err == (  # the first tensor of the lost shard that a check reads
        f"vitron convert-official: error: BASE {paths['base']}: lacks "
        "model.layers.1.self_attn.q_proj.weight, a weight the LoRA targets"
    )


def test_adapter_that_does_not_fit(release, tmp_path, capsys):
    paths = _copy(release, tmp_path)
    adapter = torch.load(paths["lora"] / "adapter_model.bin")
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    adapter[key] = torch.zeros(32, RANK)  # v_proj is (16, 32): 2 KV heads of 8
    torch.save(adapter, paths["lora"] / "adapter_model.bin")
    err = _error(capsys, paths, tmp_path)
    assert err == (
        f"vitron convert-official: error: --lora {paths['lora'] / 'adapter_model.bin'}: "
        "model.layers.0.self_attn.v_proj.weight: A (4, 32), B (32, 4) do not fit the LLM's "
        "(16, 32) weight with r=4; expected A (4, 32), B (16, 4)"
    )


def test_missing_adapter_and_tower_mismatch(release, tmp_path, capsys):
    paths = _copy(release, tmp_path)
    (paths["lora"] / "adapter_model.bin").unlink()
    err = _error(capsys, paths, tmp_path)
    assert err == (
        f"vitron convert-official: error: --lora {paths['lora'] / 'adapter_model.bin'}: "
        "missing (the LoRA's A and B matrices)"
    )
    with pytest.raises(ValueError, match=r"hidden_size 24 does not fit the projector's "
                       r"mm_hidden_size 64"):  # fmt: skip
        config = json.loads((release["base"] / "config.json").read_text())
        (paths["base"] / "config.json").write_text(json.dumps({**config, "mm_hidden_size": 64}))
        (paths["lora"] / "config.json").unlink()
        check_official(paths["base"], None, paths["tower"])
    (paths["base"] / "config.json").write_text((release["base"] / "config.json").read_text())
    with pytest.raises(ValueError, match="no such folder; expected the LanguageBind_Image"):
        check_official(paths["base"], None, tmp_path / "nowhere")


# ------------------------------------------------------------------- hub ids (issue 51, item 1)

HUB = {"base": "Vitron/vitron-base", "lora": "Vitron/vitron-lora",
       "vision_tower": "LanguageBind/LanguageBind_Image"}  # fmt: skip
ADVICE = "download it on a machine with network access, or give a local folder (./DIR)"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> list:
    """HF_HUB_OFFLINE with an empty hub home; every snapshot_download call is recorded (and
    goes to the real one, which reads only the local cache)."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    calls: list = []
    real = huggingface_hub.snapshot_download

    def record(repo_id, **kwargs):
        calls.append((repo_id, kwargs["allow_patterns"], kwargs["local_files_only"]))
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", record)
    return calls


def cache(tmp_path: Path, repo_id: str, folder: Path) -> None:
    """``folder`` as huggingface_hub caches ``repo_id``: refs/main names a snapshot holding
    its files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_hub_ids_offline_without_a_cache_fail_at_once(release, tmp_path, capsys, offline_hub):
    """Offline and not cached: one line naming the id and what to do, before anything is
    fetched; a cached base with an uncached LoRA names the LoRA, still before any fetch."""
    hub = tmp_path / "hf" / "hub"
    argv = ["convert-official", HUB["base"], "--lora", HUB["lora"], "--vision-tower",
            HUB["vision_tower"], "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"vitron convert-official: error: cannot load BASE {HUB['base']}: {HUB['base']} is not in "
        f"the local hub cache ({hub}) and HF_HUB_OFFLINE is set, so the hub is not asked; "
        f"{ADVICE}\n"
    )
    cache(tmp_path, HUB["base"], release["base"])
    with pytest.raises(OSError) as error:
        VitronModel.from_official(HUB["base"], lora=HUB["lora"], vision_tower=HUB["vision_tower"])
    assert str(error.value) == (
        f"cannot load lora {HUB['lora']}: {HUB['lora']} is not in the local hub cache ({hub}) "
        f"and HF_HUB_OFFLINE is set, so the hub is not asked; {ADVICE}"
    )
    assert offline_hub == [] and not (tmp_path / "out").exists()


def test_name_neither_folder_nor_hub_id(tmp_path, monkeypatch, offline_hub):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as error:
        check_official("vitron-bas")
    assert str(error.value) == (
        "base vitron-bas: neither a folder nor a hub id owner/name (a local folder is written "
        "./DIR); expected the LLaVA-format base folder (config.json, weights)"
    )
    assert offline_hub == []


def test_hub_ids_from_the_local_cache(release, tmp_path, offline_hub):
    """The three hub ids resolve through huggingface_hub's cache (HF_HUB_OFFLINE: nothing is
    asked of the network): the small files first, then exactly the index's shards, the adapter,
    non_lora_trainables.bin and one tower weight file; the weights equal a local import's. The
    tower defaults to the config's mm_image_tower, a hub id too."""
    from vitron.models.official_sources import BASE_FILES, LORA_FILES, TOWER_FILES

    for argument, folder in (("base", "base"), ("lora", "lora"), ("vision_tower", "tower_dir")):
        cache(tmp_path, HUB[argument], release[folder])
    model = VitronModel.from_official(HUB["base"], HUB["lora"], HUB["vision_tower"])
    shards = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert offline_hub == [
        (HUB["base"], list(BASE_FILES), True), (HUB["lora"], list(LORA_FILES), True),
        (HUB["vision_tower"], list(TOWER_FILES), True), (HUB["base"], shards, True),
        (HUB["lora"], ["adapter_model.safetensors"], True),
        (HUB["lora"], ["adapter_model.bin"], True),
        (HUB["lora"], ["non_lora_trainables.bin"], True),
        (HUB["vision_tower"], ["model.safetensors"], True),
        (HUB["vision_tower"], ["pytorch_model.bin"], True),
    ]  # fmt: skip
    local = VitronModel.from_official(release["base"], release["lora"], release["tower_dir"])
    for name, tensor in local.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    default_tower = VitronModel.from_official(HUB["base"], HUB["lora"])  # mm_image_tower
    for name, tensor in local.vision.state_dict().items():
        assert torch.equal(default_tower.vision.state_dict()[name], tensor), name


# ------------------------------------------- regions and videos of an imported model (items 3, 4)


@pytest.fixture(scope="module")
def imported(release):
    return VitronModel.from_official(release["base"], release["lora"], release["tower_dir"])


def test_region_layout_and_splice(imported, tmp_path):
    """A box on the image: the user turn is the release page's ``<image>\\n<objs> {text}``, its
    tokens are the hand-written layout below (the release's chunks: a word start after
    ``<image>``, a BOS after ``<objs>``, sentencepiece's word start before the text's leading
    space), and the splice puts the image rows at ``<image>``, the region extractor's one row
    at ``<objs>``, then the BOS's embedding."""
    from vitron import Assistant, SpecialistRegistry

    model = imported
    image = Image.new("RGB", (40, 24), (200, 30, 90))
    assistant = Assistant(model, SpecialistRegistry({}), tmp_path, scripted_replies=["a dog."])
    turn = assistant.chat("what is this?", images=[image], regions=[Region(Box(0, 0, 20, 12))])
    assert turn.user == "<image>\n<objs> what is this?" and turn.answer == "a dog."
    sample = model.processor.sample(
        assistant.messages[:1], [image], regions=assistant.inputs.regions,
        add_generation_prompt=True,
    )  # fmt: skip
    ids = sample.input_ids.tolist()
    tokens = model.tokenizer.convert_ids_to_tokens(ids)
    user = len(tokens) - tokens[::-1].index("▁USER") - 1
    assert tokens[user:] == [
        "▁USER", ":", "▁", "<image>", "▁", "<0x0A>", "<objs>", "<s>", "▁", "▁what", "▁", "is",
        "▁this", "?", "▁ASSISTANT", ":",
    ]  # fmt: skip
    with torch.no_grad():
        spliced = model.splice([sample], truncate=False)
        features = model.encode_images(sample.images)  # (1, 16, 24)
        region = sample.regions[0]
        row = model.region_encoder(features, region.coverage[None], region.box[None])[0]
        bos = model.llm.get_input_embeddings()(torch.tensor(model.tokenizer.bos_token_id))
    rows = features.shape[1]
    at_image = ids.index(model.image_token_id)
    at_region = ids.index(model.region_token_id) + rows - 1  # after the image's rows
    embeds = spliced.inputs_embeds[0]
    torch.testing.assert_close(
        embeds[at_image : at_image + rows], model.projector(features)[0], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(embeds[at_region], row, atol=1e-6, rtol=0)
    torch.testing.assert_close(embeds[at_region + 1], bos, atol=0, rtol=0)


def test_video_is_refused_in_one_line_naming_the_missing_tower(imported, tmp_path):
    """The issue accepts refusing videos: the message is one line, says why (the
    LanguageBind_Video_merge tower is not mapped) and comes before any work, from the
    processor and from the assistant."""
    from vitron import Assistant, SpecialistRegistry
    from vitron.models.official import NO_VIDEO

    assert "\n" not in NO_VIDEO and "LanguageBind_Video_merge" in NO_VIDEO
    assert imported.config.video_support == NO_VIDEO
    frames = [Image.new("RGB", (32, 32))] * 2
    with pytest.raises(ValueError) as refused:
        imported.processor.sample([Message("user", "<video>\nhi")], videos=[frames])
    assert str(refused.value) == f"this model takes no videos: {NO_VIDEO}"
    assistant = Assistant(imported, SpecialistRegistry({}), tmp_path, scripted_replies=["x"])
    with pytest.raises(ValueError) as refused:
        assistant.chat("what happens?", videos=[frames])
    assert str(refused.value) == f"videos: this model takes no videos: {NO_VIDEO}"
    assert assistant.messages == [] and assistant.scripted == ["x"]  # nothing ran
