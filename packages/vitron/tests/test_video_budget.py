"""Video at the real sizes: ViT-L/14 at 224 (16 x 16 patches), 8 frames, a Vicuna-7B-shaped LLM.

No weights: token counts come from configs, shapes from a model built on the meta device, and
splicing runs on zero rows of the real counts.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig

from vitron.models import VitronModel
from vitron.models.config import VisionConfig, VitronConfig
from vitron.models.vision import patch_grid_pool
from vitron.multimodal import splice_batch
from vitron.processing import IGNORE_INDEX, Message, VitronProcessor
from vitron.tiny import byte_level_tokenizer, tiny_config

SPECIAL = ["<image>", "<video>", "<region>", "<signal>"]


def vit_l14(image_size: int = 224) -> VisionConfig:
    """openai/clip-vit-large-patch14's vision config (weights not needed)."""
    clip = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=image_size, patch_size=14, projection_dim=768,
    )  # fmt: skip
    return VisionConfig("transformers", clip.to_dict())


def vicuna_7b(vocab_size: int = 32000) -> dict:
    """lmsys/vicuna-7b-v1.5's shape (a Llama-2-7B: width 4096, 32 layers, 4096 positions)."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, max_position_embeddings=4096,
    ).to_dict()  # fmt: skip


def real_config(**overrides) -> VitronConfig:
    return VitronConfig(vision=vit_l14(), llm=vicuna_7b(), **overrides)


def test_default_video_budget_at_real_sizes():
    config = real_config()
    assert (config.vision.grid, config.video_frames, config.video_pool) == (16, 8, 2)
    assert config.tokens_per_image == 256  # 16 x 16 patches
    assert config.tokens_per_frame == 64  # 2 x 2 average pooling: 8 x 8
    assert config.tokens_per_video == 512  # 8 frames x 64
    assert (config.max_length, config.text_budget) == (2048, 512)
    used = config.tokens_per_video + config.tokens_per_image + config.text_budget
    assert used == 1280 and config.max_length - used == 768  # margin beyond the text budget


def test_pooling_averages_2x2_patches_at_real_grid():
    frames, dim = 8, 3
    grid = torch.arange(16.0)
    # patch (r, c) of frame n holds (n, r, c) in its three channels
    features = torch.stack(
        torch.broadcast_tensors(
            torch.arange(float(frames))[:, None, None], grid[None, :, None], grid[None, None, :]
        ),
        dim=-1,
    ).reshape(frames, 256, dim)  # (8, 256, 3)
    pooled = patch_grid_pool(features, 16, 2)
    assert pooled.shape == (8, 64, 3)
    expected = torch.stack(
        torch.broadcast_tensors(
            torch.arange(float(frames))[:, None, None],
            (2 * torch.arange(8.0) + 0.5)[None, :, None],  # mean of rows 2i and 2i + 1
            (2 * torch.arange(8.0) + 0.5)[None, None, :],
        ),
        dim=-1,
    ).reshape(frames, 64, dim)
    torch.testing.assert_close(pooled, expected)
    assert patch_grid_pool(features, 16, 1) is features


def test_real_size_model_on_meta_device_fits_a_video_conversation():
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    config = VitronConfig(vision=vit_l14(), llm=vicuna_7b(len(tokenizer)))
    processor = VitronProcessor(tokenizer, config)  # outside the meta context: real pixels
    with torch.device("meta"):
        model = VitronModel(config, tokenizer)
    assert model.device.type == "meta" and model.llm_width == 4096
    frame = Image.new("RGB", (320, 240))
    question = "<image>\n<video>\nDoes the dog in the photo appear in the video? "
    messages = [
        Message("user", question + "Describe what happens, frame by frame. " * 6),
        Message("assistant", "Yes: it runs in from the left and sits down. " * 6),
    ]
    sample = processor.sample(messages, [frame], [[frame] * 24])
    assert tuple(sample.images.shape) == (1, 3, 224, 224)
    assert tuple(sample.videos.shape) == (1, 8, 3, 224, 224)  # 8 of the 24 frames
    assert tuple(model.encode_videos(sample.videos.to("meta")).shape) == (1, 512, 4096)
    media = model.media_embeddings(sample)
    assert [tuple(m.shape) for m in media] == [(256, 4096), (512, 4096)]
    # splice zero rows of those counts (width 4) at the model's max_length
    ids, labels = sample.input_ids, sample.labels
    text = ids.shape[0] - 2  # the two placeholders are replaced by their rows
    supervised = int((labels != IGNORE_INDEX).sum())
    ids_map = {model.image_token_id: "image", model.video_token_id: "video"}

    def splice(video_rows: int):
        rows = [torch.zeros(256, 4), torch.zeros(video_rows, 4)]
        return splice_batch(
            [ids], [torch.zeros(ids.shape[0], 4)], [rows], ids_map, labels=[labels],
            max_length=config.max_length,
        )  # fmt: skip

    spliced = splice(512)
    assert text + 256 + 512 <= config.max_length
    assert spliced.lengths == [text + 256 + 512]
    assert int((spliced.labels != IGNORE_INDEX).sum()) == supervised  # the reply survives
    assert [(s.kind, s.end - s.start) for s in spliced.spans[0]] == [("image", 256), ("video", 512)]
    # unpooled (8 x 256 = 2048 rows) the video alone fills max_length: training cut the
    # sequence before the video and the reply's labels were gone (the batch was skipped)
    unpooled = splice(2048)
    assert unpooled.spans[0] == spliced.spans[0][:1]
    assert int((unpooled.labels != IGNORE_INDEX).sum()) == 0


def test_configs_that_cannot_fit_name_the_numbers():
    with pytest.raises(ValueError) as info:
        real_config(video_pool=1)
    assert str(info.value) == (
        "a video does not fit: 8 frames x 256 tokens per frame = 2048, + one image 256 + "
        "text_budget 512 = 2816 positions > max_length 2048; raise video_pool (now 1), lower "
        "video_frames or text_budget, or raise max_length"
    )
    # ViT-L/14 at 336 (24 x 24 patches): 2 x 2 pooling is not enough at 2048, 3 x 3 is
    with pytest.raises(
        ValueError,
        match=r"^a video does not fit: 8 frames x 144 tokens per frame = 1152, \+ one image 576 "
        r"\+ text_budget 512 = 2240 positions > max_length 2048; raise video_pool \(now 2\)",
    ):
        VitronConfig(vision=vit_l14(336), llm=vicuna_7b())
    fits = VitronConfig(vision=vit_l14(336), llm=vicuna_7b(), video_pool=3)
    assert (fits.tokens_per_frame, fits.tokens_per_video) == (64, 512)
    # unpooled video fits in Vicuna v1.5's full context
    assert real_config(video_pool=1, max_length=4096).tokens_per_video == 2048
    with pytest.raises(
        ValueError, match=r"^max_length 8192 exceeds the LLM's max_position_embeddings 4096$"
    ):
        real_config(max_length=8192)
    with pytest.raises(ValueError, match=r"^text_budget must be >= 0, got -1$"):
        real_config(text_budget=-1)
    # a 0.1 config.json (video_pool 1, max_length 2048) is refused when read, with the numbers
    old = {**real_config().to_dict(), "video_pool": 1}
    old.pop("text_budget")
    with pytest.raises(ValueError, match=r"8 frames x 256 tokens per frame = 2048"):
        VitronConfig.from_dict(old)


def test_model_construction_rechecks_a_changed_config():
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    config = tiny_config(vocab_size=len(tokenizer))
    assert (config.tokens_per_image, config.tokens_per_frame, config.tokens_per_video) == (16, 4, 8)
    config.max_length = 100  # changed after the config checked itself
    with pytest.raises(
        ValueError,
        match=r"^a video does not fit: 2 frames x 4 tokens per frame = 8, \+ one image 16 \+ "
        r"text_budget 512 = 536 positions > max_length 100;",
    ):
        VitronModel(config, tokenizer)
