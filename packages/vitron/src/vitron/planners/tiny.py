"""Tiny random chat models of several architectures, built offline from transformers configs:
for tests and for trying ``--planner`` without a download (their replies are random, but held
to the grammar, so they parse and their calls run).

Each uses the package's byte-level tokenizer (:func:`vitron.tiny.byte_level_tokenizer`) with the
architecture's special tokens added and a small chat template of this package.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitron.tiny import byte_level_tokenizer

ARCHITECTURES = ("qwen2_vl", "llava", "idefics3", "llama")
# roles as <|role|>, messages ended by </s>; IMAGE stands for the architecture's placeholder
_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{% if m.content is string %}{{ m.content }}"
    "{% else %}{% for c in m.content %}{% if c.type == 'image' %}IMAGE{% else %}{{ c.text }}"
    "{% endif %}{% endfor %}{% endif %}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
_IDEFICS_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]


def _tokenizer(extra: list[str]):
    tokenizer = byte_level_tokenizer()
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def _text_config(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip


def tiny_planner(architecture: str, seed: int = 0):
    """``(model, processor)`` of a tiny random chat model.

    Args:
        architecture: ``qwen2_vl``, ``llava``, ``idefics3`` (image-text-to-text) or ``llama``
            (text-only; the processor is its tokenizer).
        seed: seed of the random weights.
    """
    import transformers as tf

    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}"
        )
    torch.manual_seed(seed)
    if architecture == "qwen2_vl":
        tok = _tokenizer(_QWEN_TOKENS)
        ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_TOKENS}
        text = _text_config(tok) | {"rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}}
        config = tf.Qwen2VLConfig(
            text_config=text,
            vision_config=dict(
                depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
            ),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )  # fmt: skip
        model = tf.Qwen2VLForConditionalGeneration(config)
        processor = tf.Qwen2VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
            tokenizer=tok, video_processor=tf.Qwen2VLVideoProcessor(),
            chat_template=_TEMPLATE.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"),
        )  # fmt: skip
    elif architecture == "llava":
        tok = _tokenizer(["<image>"])
        config = tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=28, patch_size=14,
            ),
            text_config=tf.LlamaConfig(**_text_config(tok)),
            image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        )  # fmt: skip
        model = tf.LlavaForConditionalGeneration(config)
        processor = tf.LlavaProcessor(
            image_processor=tf.CLIPImageProcessor(
                size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
            ),
            tokenizer=tok, patch_size=14, num_additional_image_tokens=1,
            vision_feature_select_strategy="default",
            chat_template=_TEMPLATE.replace("IMAGE", "<image>"),
        )  # fmt: skip
    elif architecture == "idefics3":
        tok = _tokenizer(_IDEFICS_TOKENS)
        config = tf.Idefics3Config(
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=28, patch_size=14,
            ),
            text_config=tf.LlamaConfig(**_text_config(tok)),
            image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2,
        )  # fmt: skip
        model = tf.Idefics3ForConditionalGeneration(config)
        processor = tf.Idefics3Processor(
            image_processor=tf.Idefics3ImageProcessor(
                size={"longest_edge": 56}, max_image_size={"longest_edge": 28},
                do_image_splitting=False,
            ),
            tokenizer=tok, image_seq_len=1, chat_template=_TEMPLATE.replace("IMAGE", "<image>"),
        )  # fmt: skip
    else:
        tok = _tokenizer([])
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**_text_config(tok)))
        tok.chat_template = _TEMPLATE
        processor = tok
    return model.eval(), processor


def write_tiny_planner(folder: str | Path, architecture: str, seed: int = 0) -> Path:
    """Save a tiny random chat model (weights, processor or tokenizer, chat template) to
    ``folder``, loadable by ``ChatPlanner.from_pretrained(folder)``; returns the folder."""
    folder = Path(folder)
    model, processor = tiny_planner(architecture, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
