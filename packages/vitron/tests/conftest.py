"""Tiny random components shared by the tests (built from configs, seeded, no downloads)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vitron.cli import main
from vitron.tiny import tiny_model, write_tiny_specialists

# seg -> edit -> fix: segment the dog, repaint it as a cat, restore the result
SEGMENT_THEN_EDIT = json.loads((Path(__file__).parent / "segment_then_edit.json").read_text())


def _reply_with_calls(text: str, invocation: dict) -> str:
    block = json.dumps(invocation)
    return f"{text} <invoke>{block}</invoke>" + "<signal>" * len(invocation["calls"]) + "</s>"


@pytest.fixture
def segment_then_edit() -> dict:
    """Calls: segment the dog, repaint it as a cat, restore the result."""
    return json.loads(json.dumps(SEGMENT_THEN_EDIT))


@pytest.fixture
def reply_with_calls():
    """``make(text, invocation)``: a reply as the model writes it (calls, signals, EOS)."""
    return _reply_with_calls


@pytest.fixture(scope="session")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Vitron folder written by ``vitron tiny-model DIR --seed 0``, one per test module."""
    folder = tmp_path_factory.mktemp("tiny_vitron") / "model"
    assert main(["tiny-model", str(folder), "--seed", "0"]) == 0
    return folder


@pytest.fixture(scope="session")
def specialists_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_specialists(tmp_path_factory.mktemp("specialists"), seed=0)


@pytest.fixture(scope="session")
def specialist_options(specialists_file: Path) -> dict:
    return json.loads(specialists_file.read_text())


@pytest.fixture
def image() -> Image.Image:
    """A 64x48 noise image whose tiny-itaclip 'dog' mask covers about a third of it."""
    rng = np.random.default_rng(4)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _write_noise_images(folder: Path, names: list[str], height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / name)


@pytest.fixture
def write_noise_images():
    """``write(folder, names, height, width)``: a (height, width) noise PNG per name in
    ``folder``, drawn one after the other from one generator seeded 0."""
    return _write_noise_images


@torch.no_grad()
def clip_template_embedding(folder: str, text: str) -> torch.Tensor:
    """itaclip's text target restated on open_clip alone: the 80 ImageNet templates filled with
    ``text``, each prompt's embedding L2-normalised, averaged, normalised again. (C,) fp32."""
    import open_clip

    from itaclip.text import imagenet_templates  # the template strings (data)

    model = open_clip.create_model(folder, pretrained=None).eval()
    tokens = open_clip.get_tokenizer(folder)([t.format(text) for t in imagenet_templates()])
    per_prompt = F.normalize(model.encode_text(tokens).float(), dim=-1)  # (80, C)
    return F.normalize(per_prompt.mean(0), dim=0)


@torch.no_grad()
def end_of_text_state(pipeline_dir: str, text: str) -> torch.Tensor:
    """A diffusion pipeline's text target restated on transformers alone: the text encoder's
    last hidden state at the end-of-text token of ``text`` (unpadded: CLIP's causal mask keeps
    padding after it from changing that row). (D,) fp32."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(Path(pipeline_dir) / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(Path(pipeline_dir) / "text_encoder").eval()
    ids = tokenizer(text).input_ids
    assert ids[-1] == tokenizer.eos_token_id
    return encoder(torch.tensor([ids])).last_hidden_state[0, -1].float()


@pytest.fixture(scope="session")
def expected_target(specialist_options: dict) -> Callable[[str, str], torch.Tensor]:
    """``expected(task, text)``: the stage-3 target of a call, computed from the tiny
    specialists' saved files without the adapters (``conditioning_target``) or the registry."""
    folders = {
        "segment_image": specialist_options["itaclip"]["model"],
        "generate_image": specialist_options["diffusers-image"]["model"],
        "edit_image": specialist_options["diffusers-inpaint"]["model"],
    }

    def expected(task: str, text: str) -> torch.Tensor:
        if task == "segment_image":
            return clip_template_embedding(folders[task], text)
        return end_of_text_state(folders[task], text)

    return expected


# ------------------------------------------------- a real LLaMA-style sentencepiece tokenizer

LLAMA_TEXT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions.",
    "USER: what is in this picture? ASSISTANT: a dog on the grass.",
    "USER: segment the dog and make it a cat ASSISTANT: Sure. <module>B</module>",
    "<instruction>segmentation: the dog</instruction><region>[0, 0, 32, 24]</region>",
    "hello world, the quick brown fox jumps over the lazy dog. what about this region?",
)


@pytest.fixture(scope="session")
def llama_sentencepiece(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tokenizer.model``: a sentencepiece BPE model with LLaMA's settings (byte fallback,
    no normalisation, the word-start dummy prefix, unk 0 / bos 1 / eos 2), trained here on a
    small text (400 pieces, 256 of them bytes)."""
    import io

    sentencepiece = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(LLAMA_TEXT * 20), model_writer=model, vocab_size=400,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("llama_sp") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="session")
def write_llama_tokenizer(llama_sentencepiece: Path) -> Callable[..., Path]:
    """``write(folder, legacy=None)``: the release's tokenizer files in ``folder``
    (``tokenizer.model``, ``tokenizer_config.json`` of a ``LlamaTokenizer`` adding BOS,
    ``special_tokens_map.json``); ``legacy`` None writes no ``legacy`` key."""

    def write(folder: Path, legacy: bool | None = None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.model").write_bytes(llama_sentencepiece.read_bytes())
        config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True,
                  "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>", "pad_token": None, "model_max_length": 2048}  # fmt: skip
        if legacy is not None:
            config["legacy"] = legacy
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        (folder / "special_tokens_map.json").write_text(json.dumps(special))
        return folder

    return write


@pytest.fixture(scope="session")
def official_rule(llama_sentencepiece: Path) -> Callable[..., list[int]]:
    """``rule(prompt, legacy, image_id, region_id)``: the release's prompt ids re-stated from
    its behaviour with sentencepiece itself (no transformers): cut at ``<objs>``, then at
    ``<image>``; each chunk is ``tokenizer(chunk).input_ids`` of a LLaMA tokenizer (BOS, then
    each text segment between ``</s>`` separators encoded by sentencepiece with its dummy
    prefix; ``legacy=False``: only the chunk's first segment gets it); the first piece keeps
    only its first chunk's BOS; later pieces keep every chunk's BOS."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    proto = llama_sentencepiece.read_bytes()
    with_prefix = sentencepiece.SentencePieceProcessor(model_proto=proto)
    plain_proto = sentencepiece_model_pb2.ModelProto()
    plain_proto.ParseFromString(proto)
    plain_proto.normalizer_spec.add_dummy_prefix = False
    plain = sentencepiece.SentencePieceProcessor(model_proto=plain_proto.SerializeToString())
    bos, eos = with_prefix.bos_id(), with_prefix.eos_id()

    def chunk_ids(text: str, legacy: bool) -> list[int]:
        out = [bos]
        for k, segment in enumerate(text.split("</s>")):
            if k:
                out.append(eos)
            if segment:
                out += (with_prefix if legacy or k == 0 else plain).encode(segment)
        return out

    def rule(prompt: str, legacy: bool, image_id: int, region_id: int) -> list[int]:
        ids: list[int] = []
        for p, piece in enumerate(prompt.split("<objs>")):
            chunks = [chunk_ids(chunk, legacy) for chunk in piece.split("<image>")]
            if p:
                ids.append(region_id)
                for c, chunk in enumerate(chunks):
                    ids += ([image_id] if c else []) + chunk
            else:
                ids += chunks[0]
                for chunk in chunks[1:]:
                    ids += [image_id, *chunk[1:]]
        return ids

    return rule
