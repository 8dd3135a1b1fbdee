"""DeepFloyd IF stage I on a tiny random IF-shaped pipeline (pixel-space U-Net with
``addition_embed_type="text"``, ``encoder_hid_dim``, 6 output channels; a tiny T5): the
backbone is recognised, the catalogue and its meta-pass shapes, the DDPM noising on pixels, an
attention output equal to a manual restatement from the module's weights, early exit,
gradients, dtypes, the official names both ways, one-line errors and the CLI on the folder."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common_kernels.runtime.errors import InvalidArgument, InvalidValue
from diffeat import FeatureExtractor, IFFeatureExtractor, generate_with_features
from diffeat.backbones import IF, UNET, backbone_of, backbone_of_model
from diffeat.backbones.deepfloyd import if_name_of_official, official_if_name
from diffeat.cli import main
from diffeat.configs import TINY_IF_UNET, TINY_SD15_UNET, TINY_T5, tiny_tokenizer
from diffeat.io import load_features
from diffeat.plan import check_from_pretrained

NAMES = [
    "unet-in", "unet-after-conv-in",
    "down-level0-repeat0-res-increment", "down-level0-repeat0-res-out",
    "down-level0-downsampler-increment", "down-level0-downsampler-out",
    "down-level1-repeat0-res-increment", "down-level1-repeat0-res-out",
    "down-level1-repeat0-attn-out",
    "mid-repeat0-res-increment", "mid-repeat0-res-out", "mid-attn-out",
    "mid-repeat1-res-increment", "mid-repeat1-res-out",
    "up-level0-repeat0-res-increment", "up-level0-repeat0-res-out", "up-level0-repeat0-attn-out",
    "up-level0-repeat1-res-increment", "up-level0-repeat1-res-out", "up-level0-repeat1-attn-out",
    "up-level0-upsampler-increment", "up-level0-upsampler-out",
    "up-level1-repeat0-res-increment", "up-level1-repeat0-res-out",
    "up-level1-repeat1-res-increment", "up-level1-repeat1-res-out", "unet-out",
]  # fmt: skip
ATTN = "down-level1-repeat0-attn-out"


@pytest.fixture(scope="module")
def parts(perturb) -> dict:
    """The tiny IF components (biases and norms perturbed: zeros hide bugs)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_IF_UNET).eval()
    perturb(unet, 1)
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    return {"unet": unet, "scheduler": scheduler, "tokenizer": tiny_tokenizer(77),
            "text_encoder": T5EncoderModel(T5Config(**TINY_T5)).eval()}  # fmt: skip


@pytest.fixture(scope="module")
def folder(parts, tmp_path_factory) -> Path:
    """An ``IFPipeline`` folder (no VAE, no safety checker) of the tiny components."""
    from diffusers import IFPipeline

    pipe = IFPipeline(**parts, safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False)  # fmt: skip
    path = tmp_path_factory.mktemp("models") / "if"
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def make(parts, **options) -> IFFeatureExtractor:
    from diffeat import ExtractorConfig

    layers = options.pop("layers", ("all",))
    return IFFeatureExtractor(**parts, config=ExtractorConfig(layers=tuple(layers), **options))


def pixels(height: int = 32, width: int = 48) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(3))


def test_recognised_and_catalogue_shapes(parts, folder):
    assert backbone_of(parts["unet"].config) is IF and backbone_of(TINY_SD15_UNET) is UNET
    assert backbone_of_model(folder) is IF
    assert IF.size_multiple(parts["unet"].config, 8) == 2  # the U-Net's x2 only, no VAE x8
    extractor = make(parts)
    infos = extractor.layer_infos((32, 48))
    assert [info.name for info in infos] == ["vae-out", *NAMES]
    shapes = {info.name: info.shape for info in infos}
    features = extractor(pixels(), "a red car")  # the real pass at a non-square size
    assert {name: tuple(value.shape[1:]) for name, value in features.items()} == shapes
    assert shapes["vae-out"] == (3, 32, 48) and shapes["unet-out"] == (6, 32, 48)
    assert shapes["down-level0-downsampler-out"] == (8, 16, 24)


def test_noising_is_ddpm_on_pixels(parts):
    extractor = make(parts, layers=("vae-out", "unet-in"), timestep=300)
    image = pixels()
    features = extractor(image, "a cat", torch.Generator().manual_seed(5))
    x0 = image * 2 - 1
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    abar = parts["scheduler"].alphas_cumprod[300]
    want = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    torch.testing.assert_close(features["vae-out"], x0, atol=0, rtol=0)
    torch.testing.assert_close(features["unet-in"], want, atol=1e-6, rtol=1e-6)


def added_kv_attention(attn, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """IF's added-KV attention restated from the module's weights: group norm, queries from the
    pixels, keys/values from the projected text then the pixels, one softmax, the output
    projection and the residual."""
    batch, channels, height, width = hidden.shape
    x = F.group_norm(hidden.view(batch, channels, -1), attn.group_norm.num_groups,
                     attn.group_norm.weight, attn.group_norm.bias, attn.group_norm.eps)  # fmt: skip
    x = x.transpose(1, 2)  # (B, HW, C)

    def lin(layer, value):
        return (
            value @ layer.weight.T + layer.bias
            if layer.bias is not None
            else value @ layer.weight.T
        )

    def heads(value):
        return value.view(batch, -1, attn.heads, value.shape[-1] // attn.heads).transpose(1, 2)

    query = heads(lin(attn.to_q, x))
    key = heads(torch.cat([lin(attn.add_k_proj, context), lin(attn.to_k, x)], 1))
    value = heads(torch.cat([lin(attn.add_v_proj, context), lin(attn.to_v, x)], 1))
    probs = (query @ key.transpose(-1, -2) * attn.scale).softmax(-1)
    out = (probs @ value).transpose(1, 2).reshape(batch, height * width, channels)
    out = lin(attn.to_out[0], out).transpose(1, 2).reshape(hidden.shape)
    return out + hidden


def test_attention_equals_a_manual_restatement(parts):
    extractor = make(parts, layers=("down-level1-repeat0-res-out", ATTN))
    features = extractor(pixels(), "a red car")
    unet = parts["unet"]
    embeds = extractor.encode_prompts(["a red car"]).embeds
    proj = unet.encoder_hid_proj
    context = embeds @ proj.weight.T + proj.bias  # IF's text projection (T5 -> cross dim)
    attn = unet.down_blocks[1].attentions[0]
    want = added_kv_attention(attn, features["down-level1-repeat0-res-out"], context)
    torch.testing.assert_close(features[ATTN], want, atol=1e-5, rtol=1e-5)


def test_early_exit(parts):
    calls = []
    handle = parts["unet"].conv_out.register_forward_hook(lambda *args: calls.append(1))
    try:
        make(parts, layers=("down-level0-repeat0-res-out",))(pixels(), "x")
        assert calls == []  # stopped after the first down block
        make(parts, layers=("down-level0-repeat0-res-out",), early_exit=False)(pixels(), "x")
        assert calls == [1]
    finally:
        handle.remove()


def test_gradients_reach_the_unet(parts):
    extractor = make(parts, layers=(ATTN,), requires_grad=True)
    extractor(pixels(16, 16), "x")[ATTN].square().mean().backward()
    grad = parts["unet"].down_blocks[1].attentions[0].to_q.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    parts["unet"].zero_grad(set_to_none=True)


def test_offload_equals_no_offload(parts):
    want = make(parts, layers=(ATTN,))(pixels(16, 16), "x")[ATTN]
    extractor = make(parts, layers=(ATTN,), offload="model").to("cpu:0")
    got = extractor(pixels(16, 16), "x")[ATTN]
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert extractor.device == torch.device("cpu:0")  # the execution device
    assert next(parts["unet"].parameters()).device == torch.device("cpu")  # parked after


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(parts, dtype):
    reference = make(parts, layers=(ATTN,))(pixels(16, 16), "x")[ATTN]
    half = {**parts, "unet": copy.deepcopy(parts["unet"]).to(dtype),
            "text_encoder": copy.deepcopy(parts["text_encoder"]).to(dtype)}  # fmt: skip
    got = make(half, layers=(ATTN,))(pixels(16, 16), "x")[ATTN]
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), reference, atol=0.1, rtol=0.05)


def test_official_names_both_ways(parts):
    names = [spec.name for spec in make(parts).catalogue]
    recorded = [name for name in names if not name.endswith("-attn-out")]
    assert len(recorded) == len(names) - 4  # every name but the 4 added-KV attention outputs
    for name in recorded:
        official = official_if_name(name, names)
        assert if_name_of_official(official, names) == name
    assert official_if_name("down-level0-downsampler-increment") == (
        "down-level0-downsampler-increment"
    )  # IF's samplers are resnets: the official code records their increment too
    with pytest.raises(ValueError, match=r"^name: 'mid-attn-out' has no official IF name \(the "):
        official_if_name("mid-attn-out")
    with pytest.raises(ValueError, match=r"^official: 'down-level1-repeat0-vit-block0-cross-q' "
                       r"has no diffeat IF name \(IF's official"):  # fmt: skip
        if_name_of_official("down-level1-repeat0-vit-block0-cross-q")
    with pytest.raises(ValueError, match=r"^name: 'up-level9-repeat0-res-out' is not in this IF"):
        official_if_name("up-level9-repeat0-res-out", names)


def test_from_pretrained_equals_the_components(parts, folder):
    layers = ["unet-in", ATTN]
    loaded = FeatureExtractor.from_pretrained(folder, layers=layers, timestep=200)
    assert type(loaded) is IFFeatureExtractor and loaded.vae is None
    from diffusers import IFPipeline

    pipe = IFPipeline(**parts, safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False)  # fmt: skip
    direct = IFFeatureExtractor.from_pipeline(pipe, layers=layers, timestep=200)
    assert direct.unet is parts["unet"]  # wrapped, no copy
    want, got = direct(pixels(), "a horse"), loaded(pixels(), "a horse")
    for name in layers:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-6)


def test_bad_input(parts, folder):
    line = r"^latent: DeepFloyd IF works in pixel space \(no VAE posterior\); only 'sample' \("
    with pytest.raises(ValueError, match=line + r"the default\) applies; got 'mean'$"):
        make(parts, latent="mean")
    with pytest.raises(InvalidArgument, match=r"^latent: DeepFloyd IF works in pixel space"):
        check_from_pretrained(folder, layers=["unet-in"], latent="mean")
    with pytest.raises(InvalidArgument, match=r"^noising: DeepFloyd IF takes 'random' only"):
        check_from_pretrained(folder, layers=["unet-in"], noising="ddim-inversion")
    with pytest.raises(InvalidArgument, match=r"^max_sequence_length: DeepFloyd IF's T5 prompts"):
        check_from_pretrained(folder, layers=["unet-in"], max_sequence_length=32)
    with pytest.raises(ValueError, match=r"^images: height and width must be multiples of 2 for "
                       r"this model \(pixel space, U-Net x2\); got 33x48"):  # fmt: skip
        make(parts)(torch.rand(1, 3, 33, 48), "x")
    from diffusers import IFPipeline

    pipe = IFPipeline(**parts, safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False)  # fmt: skip
    with pytest.raises(InvalidValue, match=r"^pipe: .*recording while DeepFloyd IF generates is "
                       r"not supported$"):  # fmt: skip
        generate_with_features(pipe, [ATTN], [0])
    with pytest.raises(ValueError, match=r"^unet: not a DeepFloyd IF U-Net"):
        from diffusers import UNet2DConditionModel

        IFFeatureExtractor(UNet2DConditionModel(**TINY_SD15_UNET), parts["scheduler"])


def test_layers_and_extract_commands(folder, image, tmp_path, capsys):
    assert main(["layers", "--model", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{len(NAMES)} of {len(NAMES)} activations"
    assert any(ATTN in line and "16 x 16 x 16" in line for line in out)  # 32 px, no VAE
    target = tmp_path / "f.safetensors"
    argv = ["extract", str(image), "--model", str(folder), "--layers", f"vae-out,{ATTN}",
            "-o", str(target)]  # fmt: skip
    assert main(argv) == 0
    features, _ = load_features(target)
    assert features["vae-out"].shape == (1, 3, 32, 48)
    assert features[ATTN].shape == (1, 16, 16, 24)


def test_probe_command(folder, image, capsys):
    probe = ["probe", str(image), "--model", str(folder), "--layers", ATTN, "--probes",
             "noise,locality"]  # fmt: skip
    assert main(probe) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["activation", "noise", "locality"]
    assert table[1].split()[0] == ATTN and len(table[1].split()) == 3


def test_pca_command(folder, image, tmp_path):
    pca = ["pca", str(image), "--model", str(folder), "--layers", ATTN, "-o", str(tmp_path / "p")]
    assert main(pca) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [f"a__{ATTN}.png"]


def test_bad_cli_input_is_one_line_before_any_work(folder, image, tmp_path, refused):
    base = ["extract", str(image), "--model", str(folder), "-o", str(tmp_path / "g.safetensors")]
    cases = [
        ([*base, "--layers", ATTN, "--latent", "mean"],
         "--latent: DeepFloyd IF works in pixel space (no VAE posterior); only 'sample' (the "
         "default) applies; got 'mean'"),
        ([*base, "--layers", ATTN, "--faithful"],
         "--faithful: the official code's path is restated for U-Nets only, not for DeepFloyd "
         "IF models"),
        ([*base, "--layers", ATTN, "--image-size", "33"],
         "--image-size 33x33: height and width must be multiples of 2 for this model (pixel "
         "space, U-Net x2)"),
    ]  # fmt: skip
    for argv, line in cases:
        refused(argv, line)
    assert not (tmp_path / "g.safetensors").exists()


def test_the_tiny_model_on_the_page(tiny_page, page_pca):
    """``diffeat tiny-model --kind if``'s folder on the page: the catalogue offered, its
    first two names selected (no preset), the PCA of a layer, the random-weights line."""
    page = tiny_page("if")
    assert page.choices == ["vae-out", *NAMES]
    labels, feature = page_pca(page, ATTN)
    height, width = feature.shape[2:]
    assert labels == [f"{ATTN}: {feature.shape[1]} channels at {height}x{width}"]
