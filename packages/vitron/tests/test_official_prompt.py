"""The release's prompt tokenisation (issue 51, item 1): an imported model's prompt is cut at its
placeholders and tokenised chunk by chunk as the release does, checked with a real
sentencepiece LLaMA tokenizer trained here against a re-statement of the release's rule that
uses sentencepiece itself (conftest ``official_rule``), for both of transformers' word-start
rules (``legacy``)."""

from __future__ import annotations

import pytest
from PIL import Image

from vitron.models.config import VisionConfig, VitronConfig
from vitron.models.official import VICUNA_SYSTEM
from vitron.official_prompt import official_tokens
from vitron.processing import IGNORE_INDEX, Message, VitronProcessor
from vitron.regions import Box, Region

pytest.importorskip("sentencepiece")

TOKENS = ["<image>", "<video>", "<objs>", "<signal>"]  # what the import adds
TWO_TURNS = (
    f"{VICUNA_SYSTEM} USER: <image>\nwhat is this? ASSISTANT: a dog on the grass.</s>"
    "USER: <objs> and this region? ASSISTANT:"
)


def llama(folder, write_llama_tokenizer, legacy: bool, cls: str = "LlamaTokenizer"):
    """The release's tokenizer files loaded as the import loads them, the placeholders added."""
    import transformers

    write_llama_tokenizer(folder, legacy=legacy)
    tokenizer = getattr(transformers, cls).from_pretrained(str(folder), legacy=legacy)
    tokenizer.add_special_tokens({"additional_special_tokens": TOKENS})
    return tokenizer


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("cls", ["LlamaTokenizer", "LlamaTokenizerFast", "AutoTokenizer"])
def test_chunked_ids_equal_the_release_rule(
    tmp_path, write_llama_tokenizer, official_rule, legacy, cls
):
    tokenizer = llama(tmp_path / "tok", write_llama_tokenizer, legacy, cls)
    image_id, region_id = tokenizer.convert_tokens_to_ids(["<image>", "<objs>"])
    ids, spans = official_tokens(TWO_TURNS, tokenizer, "<image>", "<objs>", image_id, region_id)
    expected = official_rule(TWO_TURNS, legacy, image_id, region_id)
    assert ids == expected
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    # one BOS opens the prompt and one follows the region placeholder (its piece keeps it)
    assert [k for k, t in enumerate(ids) if t == bos] == [0, ids.index(region_id) + 1]
    assert ids.count(eos) == 1 and ids.count(image_id) == 1
    # after the image: the new chunk's word start, then the newline byte
    after = tokenizer.convert_ids_to_tokens(ids[ids.index(image_id) + 1 : ids.index(image_id) + 3])
    assert after == ["▁", "<0x0A>"]
    # the spans cover the prompt's words in order; BOS covers no character
    assert spans[0] == (0, 0) and spans[ids.index(region_id)] == (
        TWO_TURNS.index("<objs>"), TWO_TURNS.index("<objs>") + 6,
    )  # fmt: skip
    covered = "".join(TWO_TURNS[a:b] for a, b in spans if b > a)
    assert "".join(covered.split()) == "".join(TWO_TURNS.split())


def test_one_pass_differs_where_the_release_cuts(tmp_path, write_llama_tokenizer, official_rule):
    """What the chunked rule changes (why the faithful path exists): the BOS after a region
    placeholder, and with ``legacy=False`` the word start after ``<image>`` and ``</s>``."""
    tokenizer = llama(tmp_path / "tok", write_llama_tokenizer, legacy=False)
    image_id, region_id = tokenizer.convert_tokens_to_ids(["<image>", "<objs>"])
    one_pass = tokenizer(TWO_TURNS)["input_ids"]
    chunked = official_rule(TWO_TURNS, False, image_id, region_id)
    assert one_pass != chunked
    at = one_pass.index(image_id)
    assert tokenizer.convert_ids_to_tokens(one_pass[at + 1 : at + 2]) == ["<0x0A>"]  # no "▁"
    assert one_pass[one_pass.index(region_id) + 1] != tokenizer.bos_token_id


def official_config(image_size: int = 32) -> VitronConfig:
    vision = VisionConfig(model_config={"image_size": image_size, "patch_size": 8,
                                        "hidden_size": 24})  # fmt: skip
    return VitronConfig(
        vision=vision, llm={}, max_length=1024, video_frames=1, video_pool=1, template="vicuna_v1",
        system_prompt=VICUNA_SYSTEM, region_token="<objs>", prompt_layout="official",
    )  # fmt: skip


@pytest.mark.parametrize("legacy", [True, False])
def test_processor_sample_follows_the_rule(tmp_path, write_llama_tokenizer, official_rule, legacy):
    """A two-turn conversation with an image, a reply and a region: the processor's ids are the
    release's, the image and region placeholders stand for media, the reply (with its
    ``</s>``) is the only supervised part, and the mid-prompt BOS is not supervised."""
    tokenizer = llama(tmp_path / "tok", write_llama_tokenizer, legacy)
    image_id, region_id = tokenizer.convert_tokens_to_ids(["<image>", "<objs>"])
    processor = VitronProcessor(tokenizer, official_config())
    messages = [
        Message("user", "<image>\nwhat is this?"),
        Message("assistant", "a dog on the grass."),
        Message("user", "<objs> and this region?"),
    ]
    image = Image.new("RGB", (40, 24), (200, 30, 90))
    sample = processor.sample(
        messages, [image], regions=[Region(Box(0, 0, 20, 12))], add_generation_prompt=True
    )
    ids = sample.input_ids.tolist()
    assert ids == official_rule(TWO_TURNS, legacy, image_id, region_id)
    media = sample.placeholder_mask.tolist()
    assert [k for k, m in enumerate(media) if m] == [ids.index(image_id), ids.index(region_id)]
    labelled = [t for t, label in zip(ids, sample.labels.tolist(), strict=True) if label != -100]
    reply = tokenizer.decode(labelled)
    assert reply.strip() == "a dog on the grass.</s>"
    assert sample.labels[ids.index(region_id) + 1] == IGNORE_INDEX  # the BOS after <objs>


def test_one_pass_layout_is_unchanged(tmp_path, write_llama_tokenizer):
    """A model not imported (``prompt_layout="vitron"``) still tokenises in one pass, BOS
    first."""
    tokenizer = llama(tmp_path / "tok", write_llama_tokenizer, legacy=False)
    config = official_config()
    config.prompt_layout = "vitron"
    sample = VitronProcessor(tokenizer, config).sample(
        [Message("user", "hi")], add_generation_prompt=True
    )
    text = f"{VICUNA_SYSTEM} USER: hi ASSISTANT:"
    expected = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert sample.input_ids.tolist() == expected


def test_bad_layout_and_placeholders():
    with pytest.raises(ValueError, match=r"prompt_layout must be one of \('vitron', 'official'\)"):
        VitronConfig(prompt_layout="llava")
    with pytest.raises(ValueError, match="non-empty image and region placeholders"):
        official_tokens("x", None, "", "<objs>", 1, 2)
