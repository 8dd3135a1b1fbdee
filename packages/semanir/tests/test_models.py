"""SemanIR, its dense-window-attention twin and DnCNN: shapes, invariants, configs, I/O."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from common_kernels import KNNDictionary, knn_graph
from common_kernels import dictionary as dictionary_module
from semanir.models import (
    CONFIGS,
    DnCNN,
    DnCNNConfig,
    SemanIRConfig,
    build_model,
    count_parameters,
    dense_window_attention,
    get_config,
)
from semanir.models import semanir as semanir_module
from semanir.models.semanir import SemanIR, reflect_indices, reflect_pad_to_multiple

TEST_CONFIGS = [
    "semanir_test_tiny_unet",
    "semanir_test_tiny_columnar",
    "window_attention_test_tiny",
    "dncnn_test_tiny",
]
ODD_SIZES = [(1, 1), (3, 5), (4, 4), (7, 13), (17, 9), (16, 24)]


def tiny(name: str = "semanir_test_tiny_unet", **overrides) -> SemanIR:
    """A seeded tiny model built from a registered test config."""
    torch.manual_seed(0)
    return build_model(name, **overrides)


def images(channels: int, height: int, width: int, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, channels, height, width, generator=generator)


class DictionaryRecorder:
    """Wraps knn_dictionary and knn_attention_packed in the model module and records their
    calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.graph_calls: list[tuple[tuple[int, ...], int]] = []
        self.attention_idx: list[torch.Tensor] = []
        knn_dictionary = semanir_module.knn_dictionary
        knn_attention_packed = semanir_module.knn_attention_packed

        def graph(x, k, **kwargs):
            self.graph_calls.append((tuple(x.shape), k))
            return knn_dictionary(x, k, **kwargs)

        def attention(qkv, idx, **kwargs):
            self.attention_idx.append(idx)
            return knn_attention_packed(qkv, idx, **kwargs)

        monkeypatch.setattr(semanir_module, "knn_dictionary", graph)
        monkeypatch.setattr(semanir_module, "knn_attention_packed", attention)

    @property
    def ks(self) -> list[int]:
        return [k for _, k in self.graph_calls]


# ---------------------------------------------------------------------------- configs


def test_config_json_round_trip_restores_tuples():
    config = get_config("semanir_test_tiny_columnar", inference_k=6)
    loaded = SemanIRConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert loaded == config
    assert isinstance(loaded.depths, tuple) and isinstance(loaded.img_mean, tuple)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"top_k": 17}, r"top_k must be an int in \[1, 16\] \(a 4x4 window holds 16 tokens\)"),
        ({"train_k_choices": (4, 9)}, r"every train_k_choices entry must be an int in \[1, 8\]"),
        ({"train_k_choices": ()}, "train_k_choices must hold at least one k"),
        ({"inference_k": 0}, r"inference_k must be an int in \[1, 16\]"),
        ({"depths": (1, 1, 1), "heads": (1, 1, 1)}, "needs 2L \\+ 2 depths"),
        ({"heads": (1, 2)}, "heads must have one entry per stage"),
        ({"heads": (3, 2, 1, 1)}, "stage 0 width 8 must be a multiple of heads=3"),
        ({"upscale": 2}, "unet bodies restore at scale 1"),
        ({"upscale": 5}, "upscale must be one of 1, 2, 3, 4"),
        ({"dictionary": "global"}, "dictionary must be one of 'stage', 'layer', 'dense'"),
        ({"img_mean": (0.5, 0.5)}, "img_mean needs one value per channel"),
    ],
)
def test_config_rejects_inconsistent_fields(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config("semanir_test_tiny_unet", **overrides)


def test_config_rejects_unknown_names_and_fields():
    with pytest.raises(KeyError, match="unknown model config 'semanir_huge'"):
        get_config("semanir_huge")
    with pytest.raises(ValueError, match=r"unknown SemanIRConfig fields \['topk'\]"):
        get_config("semanir_test_tiny_unet", topk=3)
    with pytest.raises(ValueError, match=r"unknown SemanIRConfig fields \['extra'\]"):
        SemanIRConfig.from_dict({**SemanIRConfig().to_dict(), "extra": 1})


def test_columnar_config_needs_a_single_level():
    with pytest.raises(ValueError, match=r"columnar bodies take dim_mults=\(1,\)"):
        get_config("semanir_test_tiny_columnar", dim_mults=(1, 2))


# ---------------------------------------------------------------------------- parameter counts


def meta_parameter_count(name: str) -> int:
    """Parameters of a named model built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return count_parameters(build_model(name))


@pytest.mark.parametrize("name", [f"semanir_small_sr_x{s}" for s in (2, 3, 4)])
def test_small_sr_models_have_about_12m_parameters(name):
    assert abs(meta_parameter_count(name) - 12e6) <= 0.15 * 12e6


@pytest.mark.parametrize(
    "name",
    [
        "semanir_base_denoise_gray",
        "semanir_base_denoise_color",
        "semanir_base_jpeg_gray",
        "semanir_base_jpeg_color",
        "semanir_base_deblur",
        "semanir_base_demosaic",
    ],
)
def test_base_unet_models_have_about_26m_parameters(name):
    assert abs(meta_parameter_count(name) - 26e6) <= 0.15 * 26e6


def test_tiny_models_and_baselines_have_comparable_sizes():
    semanir = meta_parameter_count("semanir_tiny_denoise_gray")
    assert 1e5 <= semanir <= 1e6
    assert meta_parameter_count("window_attention_tiny_denoise_gray") == semanir
    assert abs(meta_parameter_count("dncnn_tiny_denoise_gray") - semanir) <= 0.15 * semanir
    for scale in (2, 3, 4):
        assert 1e5 <= meta_parameter_count(f"semanir_tiny_sr_x{scale}") <= 1e6


def test_the_small_denoiser_is_the_tiny_one_half_as_wide_again():
    small, tiny = get_config("semanir_small_denoise_gray"), get_config("semanir_tiny_denoise_gray")
    assert small.embed_dim == 48 == tiny.embed_dim * 3 // 2
    assert [d // h for d, h in zip(small.stage_dims(), small.heads, strict=True)] == [16] * 6
    assert (small.depths, small.dim_mults, small.window_size) == (
        tiny.depths,
        tiny.dim_mults,
        tiny.window_size,
    )
    assert 0.9e6 <= meta_parameter_count("semanir_small_denoise_gray") <= 1.1e6  # 1,011,895
    model = build_model("semanir_small_denoise_gray").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 40, 56)).shape == (1, 1, 40, 56)


def test_published_dncnn_has_its_published_size():
    # 17 layers, 64 features, gray: 1*64*9 + 64 + 15 * (64*64*9 + 2*64) + 64*9 = 556,096
    assert meta_parameter_count("dncnn_denoise_gray") == 556_096


@pytest.mark.parametrize("name", TEST_CONFIGS)
def test_test_configs_have_a_few_thousand_parameters(name):
    assert 1_000 <= meta_parameter_count(name) <= 10_000


def test_every_registered_config_builds_its_model_class():
    for name in CONFIGS:
        with torch.device("meta"):
            model = build_model(name)
        expected = DnCNN if name.startswith("dncnn") else SemanIR
        assert type(model) is expected, name


# ---------------------------------------------------------------------------- shapes and padding


@pytest.mark.parametrize("name", TEST_CONFIGS)
@pytest.mark.parametrize("size", ODD_SIZES)
def test_output_shape_for_any_input_size(name, size):
    model = tiny(name).eval()
    x = images(model.in_channels, *size)
    with torch.no_grad():
        y = model(x)
    scale = model.upscale
    assert y.shape == (2, model.out_channels, size[0] * scale, size[1] * scale)
    assert bool(torch.isfinite(y).all())


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_columnar_output_shape_for_every_upscale(scale):
    model = tiny("semanir_test_tiny_columnar", upscale=scale).eval()
    with torch.no_grad():
        y = model(images(3, 5, 7))
    assert y.shape == (2, 3, 5 * scale, 7 * scale)


def test_unet_with_two_levels_pads_to_window_times_four():
    model = tiny("semanir_test_tiny_unet", dim_mults=(1, 2, 2), depths=(1,) * 6, heads=(1,) * 6)
    assert model.pad_multiple == 16
    with torch.no_grad():
        assert model.eval()(images(1, 9, 21)).shape == (2, 1, 9, 21)


def test_reflect_padding_matches_torch_reflect_for_short_pads():
    x = images(2, 9, 11)
    expected = F.pad(x, (0, 5, 0, 7), mode="reflect")
    assert torch.equal(reflect_pad_to_multiple(x, 16), expected)
    assert torch.equal(reflect_pad_to_multiple(x[..., :8, :8], 8), x[..., :8, :8])


def test_reflect_padding_mirrors_repeatedly_and_repeats_single_pixels():
    assert reflect_indices(3, 9).tolist() == [0, 1, 2, 1, 0, 1, 2, 1, 0]
    assert reflect_indices(1, 4).tolist() == [0, 0, 0, 0]
    pixel = torch.tensor([[[[0.25]]]])
    assert torch.equal(reflect_pad_to_multiple(pixel, 4), torch.full((1, 1, 4, 4), 0.25))


# ---------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("overrides", [{}, {"img_mean": (0.5,), "img_range": 255.0}])
def test_zero_reconstruction_makes_restoration_the_identity(overrides):
    model = tiny("semanir_test_tiny_unet", **overrides).eval()
    torch.nn.init.zeros_(model.reconstruct.weight)
    torch.nn.init.zeros_(model.reconstruct.bias)
    x = images(1, 13, 6)
    with torch.no_grad():
        assert torch.equal(model(x), x)


def test_zero_last_conv_makes_dncnn_the_identity():
    model = tiny("dncnn_test_tiny").eval()
    torch.nn.init.zeros_(model.body[-1].weight)
    x = images(1, 10, 7)
    with torch.no_grad():
        assert torch.equal(model(x), x)


@pytest.mark.parametrize("name", ["semanir_test_tiny_unet", "semanir_test_tiny_columnar"])
def test_dense_mode_equals_knn_mode_with_every_window_token(name):
    knn = tiny(name).eval()
    dense = SemanIR(dense_window_attention(knn.config)).eval()
    dense.load_state_dict(knn.state_dict(), strict=True)
    x = images(knn.in_channels, 11, 9)
    with torch.no_grad():
        expected = dense(x)
        actual = knn(x, k=knn.config.window_size**2)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert (knn(x, k=4) - expected).abs().max() > 1e-3  # a real dictionary changes the output


def test_window_attention_configs_are_the_dense_twins_of_semanir_configs():
    semanir = get_config("semanir_tiny_denoise_gray")
    dense = get_config("window_attention_tiny_denoise_gray")
    assert dense == dense_window_attention(semanir)
    assert dense.dictionary == "dense"
    differing = {
        f.name
        for f in dataclasses.fields(semanir)
        if getattr(semanir, f.name) != getattr(dense, f.name)
    }
    assert differing == {"dictionary", "top_k", "train_k_choices"}


@pytest.mark.parametrize("backend", ["reference", "gather"])
def test_attention_backends_agree(backend):
    mask = tiny("semanir_test_tiny_unet", attention_backend="mask").eval()
    other = SemanIR(dataclasses.replace(mask.config, attention_backend=backend)).eval()
    other.load_state_dict(mask.state_dict())
    x = images(1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(other(x, k=5), mask(x, k=5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"cosine_attention": False, "norm": "pre"}])
def test_training_through_the_cpp_kernel_matches_the_reference_backend(overrides):
    """A training step with the C++ kernel's forward and backward (the q/k/v gradient written
    in the projection's layout, the bias and logit-scale gradients from the kernel): the same
    loss and every parameter's gradient as the fp32 reference backend."""
    cpp = tiny("semanir_test_tiny_unet", attention_backend="cpp", **overrides).train()
    reference = SemanIR(dataclasses.replace(cpp.config, attention_backend="reference")).train()
    reference.load_state_dict(cpp.state_dict())
    x = images(1, 12, 12)
    target = images(1, 12, 12).flip(-1)
    grads = []
    for model in (cpp, reference):
        loss = F.l1_loss(model(x, k=5), target)
        loss.backward()
        grads.append({"loss": loss.detach(), **{n: p.grad for n, p in model.named_parameters()}})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        expected = grads[1][name]
        atol = 1e-4 * max(1.0, expected.abs().max().item())
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=atol, msg=name)


# ---------------------------------------------------------------------------- the dictionary


def test_dictionary_is_built_once_per_stage_and_shared_by_its_layers(monkeypatch):
    model = tiny("semanir_test_tiny_unet", depths=(2, 3, 2, 2)).eval()
    recorder = DictionaryRecorder(monkeypatch)
    with torch.no_grad():
        model(images(1, 8, 8, batch=3), k=6)
    # batch 3 of 8x8: 3 * 4 windows of 4x4 tokens at full resolution (width 8), 3 * 1 at the
    # bottleneck (width 16); stages in order down, bottleneck, up, refinement
    full, bottleneck = ((12, 16, 8), 6), ((3, 16, 16), 6)
    assert recorder.graph_calls == [full, bottleneck, full, full]
    idx = recorder.attention_idx
    assert len(idx) == 9
    per_stage = [idx[0:2], idx[2:5], idx[5:7], idx[7:9]]
    for layers in per_stage:
        assert all(t is layers[0] for t in layers)  # the very same dictionary object
        assert isinstance(layers[0], KNNDictionary) and layers[0].k == 6
    assert len({id(layers[0]) for layers in per_stage}) == 4


@pytest.mark.parametrize(
    ("backend", "builder"),
    [
        ("mask", "neighbour_log_multiplicity"),
        ("reference", "neighbour_log_multiplicity"),
        ("gather", None),
        ("triton", "transposed_neighbours"),
    ],
)
def test_what_a_backend_derives_from_the_dictionary_is_built_once_per_stage(
    monkeypatch, backend, builder
):
    """Masks and transposed lists follow the dictionary: one per stage, not one per layer."""
    if backend == "triton":
        pytest.importorskip("triton")
    model = tiny("semanir_test_tiny_unet", depths=(2, 3, 2, 2), attention_backend=backend)
    recorder = DictionaryRecorder(monkeypatch)
    builds = []
    if builder is not None:
        original = getattr(dictionary_module, builder)

        def counting(*args, **kwargs):
            builds.append(builder)
            return original(*args, **kwargs)

        monkeypatch.setattr(dictionary_module, builder, counting)
    model(images(1, 8, 8), k=6).sum().backward()  # training mode: forward and backward
    assert len(recorder.graph_calls) == 4 and len(recorder.attention_idx) == 9
    if builder is not None:
        assert len(builds) == 4  # one per stage (and per dtype), shared by its 2-3 layers
    if backend == "gather":
        caches = {id(d): d._cache for d in recorder.attention_idx}
        assert len(caches) == 4
        # row ids and the bias index, each built once for the stage's head count
        assert all({key[0] for key in c} == {"rows", "index"} for c in caches.values())
        assert all(len(c) == 2 for c in caches.values())


def test_layer_mode_builds_one_dictionary_per_layer(monkeypatch):
    model = tiny("semanir_test_tiny_unet", depths=(2, 3, 2, 2), dictionary="layer").eval()
    recorder = DictionaryRecorder(monkeypatch)
    with torch.no_grad():
        model(images(1, 8, 8), k=6)
    assert len(recorder.graph_calls) == 9
    assert len({id(t) for t in recorder.attention_idx}) == 9


def test_dense_mode_builds_no_dictionary(monkeypatch):
    model = tiny("window_attention_test_tiny").eval()
    recorder = DictionaryRecorder(monkeypatch)
    with torch.no_grad():
        model(images(1, 8, 8))
    assert recorder.graph_calls == [] and recorder.attention_idx == [None] * 4  # all dense


@pytest.mark.parametrize("backend", ["mask", "gather"])
def test_dictionary_prefix_of_top_k_is_the_smaller_dictionary(backend):
    """Both forms (a mask for the dense backends, lists for the others) hold knn_graph's sets;
    the lists keep its order, so the top-4 list is the prefix of the top-8 one."""
    windows = torch.randn(5, 16, 8)
    stage = tiny(attention_backend=backend).stages[0]
    top8, top4 = stage.build_dictionary(windows, 8), stage.build_dictionary(windows, 4)
    graph = knn_graph(windows, 8, similarity="cosine")
    expected8 = torch.zeros(5, 16, 16, dtype=torch.bool).scatter_(-1, graph, True)
    expected4 = torch.zeros(5, 16, 16, dtype=torch.bool).scatter_(-1, graph[..., :4], True)
    assert torch.equal(top8.membership()[:, 0], expected8)
    assert torch.equal(top4.membership()[:, 0], expected4)
    if backend == "gather":
        assert torch.equal(top8.idx[..., :4], top4.idx)


# ---------------------------------------------------------------------------- random top-k


def train_ks(model: SemanIR, recorder: DictionaryRecorder, seed: int, steps: int) -> list[int]:
    """The k of each of ``steps`` seeded training forwards (one per forward, all stages)."""
    torch.manual_seed(seed)
    recorder.graph_calls.clear()
    x = images(1, 4, 4, batch=1)
    for _ in range(steps):
        model(x)
    stages = len(model.config.depths)
    ks = recorder.ks
    assert all(ks[i : i + stages] == [ks[i]] * stages for i in range(0, len(ks), stages))
    return ks[::stages]


def test_training_draws_k_from_the_choices_reproducibly(monkeypatch):
    model = tiny().train()
    recorder = DictionaryRecorder(monkeypatch)
    first = train_ks(model, recorder, seed=3, steps=12)
    second = train_ks(model, recorder, seed=3, steps=12)
    assert first == second
    assert set(first) <= set(model.config.train_k_choices)
    assert len(set(first)) > 1
    assert train_ks(model, recorder, seed=4, steps=12) != first


def test_eval_uses_inference_k_and_calls_can_override(monkeypatch):
    recorder = DictionaryRecorder(monkeypatch)
    x = images(1, 4, 4, batch=1)
    with torch.no_grad():
        tiny().eval()(x)
        tiny(inference_k=5).eval()(x)
        tiny(inference_k=5).eval()(x, k=3)
        tiny().train()(x, k=7)
    stages = 4
    assert recorder.ks == [8] * stages + [5] * stages + [3] * stages + [7] * stages


@pytest.mark.parametrize("k", [0, 17, 2.0])
def test_k_outside_the_window_is_rejected(k):
    model = tiny().eval()
    with pytest.raises(ValueError, match=rf"k must be an int in \[1, 16\] .*4x4 window.*got {k}"):
        model(images(1, 4, 4), k=k)


def test_dense_mode_rejects_k():
    with pytest.raises(ValueError, match="k=4 only applies to dictionary='stage' or 'layer'"):
        tiny("window_attention_test_tiny")(images(1, 4, 4), k=4)


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("semanir_test_tiny_unet", {}),
        ("semanir_test_tiny_unet", {"norm": "pre", "dictionary": "layer", "similarity": "dot"}),
        ("semanir_test_tiny_unet", {"cosine_attention": False, "position_bias": False}),
        ("semanir_test_tiny_columnar", {}),
        ("window_attention_test_tiny", {}),
        ("dncnn_test_tiny", {}),
    ],
)
def test_gradient_reaches_every_parameter(name, overrides):
    model = tiny(name, **overrides).train()
    x = images(model.in_channels, 9, 10)
    target = images(model.out_channels, 9 * model.upscale, 10 * model.upscale, batch=2).flip(0)
    F.mse_loss(model(x), target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_options_without_parameters_remove_them():
    plain = tiny(cosine_attention=False, position_bias=False)
    names = [n for n, _ in plain.named_parameters()]
    assert not any("logit_scale" in n or "position_mlp" in n for n in names)
    assert plain.stages[0].position_index is None


# ---------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("name", ["semanir_test_tiny_unet", "dncnn_test_tiny"])
@pytest.mark.parametrize(
    ("shape", "got"),
    [((1, 3, 8, 8), r"\(1, 3, 8, 8\)"), ((1, 8, 8), r"\(1, 8, 8\)")],
)
def test_bad_input_shapes_are_rejected(name, shape, got):
    model = tiny(name)
    with pytest.raises(ValueError, match=rf"x must be a \(B, 1, H, W\) tensor .*got {got}"):
        model(torch.rand(shape))


# ---------------------------------------------------------------------------- hub round trip


@pytest.mark.parametrize("name", ["semanir_test_tiny_unet", "semanir_test_tiny_columnar"])
def test_save_pretrained_from_pretrained_round_trip(tmp_path, name):
    model = tiny(name, inference_k=5).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(
        json.dumps(model.config.to_dict())
    )
    loaded = SemanIR.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert not loaded.training
    x = images(model.in_channels, 9, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_dncnn_round_trip_keeps_batch_norm_statistics(tmp_path):
    model = tiny("dncnn_test_tiny").train()
    model(images(1, 8, 8))  # moves the running statistics away from their init
    model.eval().save_pretrained(tmp_path)
    loaded = DnCNN.from_pretrained(tmp_path)
    assert loaded.config == DnCNNConfig(channels=1, features=8, depth=4)
    x = images(1, 9, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_constructor_accepts_the_dict_form_of_the_config():
    config = get_config("semanir_test_tiny_unet")
    assert SemanIR(config.to_dict()).config == config


# ---------------------------------------------------------------------------- mixed precision


def _residual_and_grads(model: SemanIR, x: torch.Tensor, autocast: bool):
    """The model's correction (output - input) and every parameter's gradient, in fp32."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x, k=6)
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out.float() * weights).sum().backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}
    return (out.float() - x).detach(), grads


@pytest.mark.parametrize("backend", ["reference", "mask", "gather", "triton"])
def test_bf16_autocast_forward_and_backward_for_every_cpu_backend(backend):
    """0.1's mask path crashed under half-precision autocast; every backend that trains on the
    CPU runs SemanIR under bf16 autocast and matches its fp32 run to bf16 accuracy."""
    if backend == "triton":
        pytest.importorskip("triton")
    model = tiny("semanir_test_tiny_unet", attention_backend=backend)
    with torch.no_grad():  # a correction large enough to compare
        model.reconstruct.weight.mul_(100)
    x = images(1, 12, 12)
    exact, exact_grads = _residual_and_grads(model, x, autocast=False)
    half, half_grads = _residual_and_grads(model, x, autocast=True)
    assert (half - exact).norm() <= 0.03 * exact.norm()  # bf16 keeps 8 significant bits
    exact_all = torch.cat([g.flatten() for g in exact_grads.values()])
    half_all = torch.cat([half_grads[n].flatten() for n in exact_grads])
    assert torch.isfinite(half_all).all()
    assert (half_all - exact_all).norm() <= 0.1 * exact_all.norm()


def test_bf16_autocast_flex_forward_on_cpu():
    """FlexAttention has no backward on the CPU: its autocast run is forward only."""
    model = tiny("semanir_test_tiny_unet", attention_backend="flex").eval()
    reference = tiny("semanir_test_tiny_unet", attention_backend="reference").eval()
    with torch.no_grad():
        model.reconstruct.weight.mul_(100)
        reference.reconstruct.weight.mul_(100)
    x = images(1, 12, 12)
    with torch.no_grad():
        exact = reference(x, k=6) - x
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x, k=6).float() - x
    assert (half - exact).norm() <= 0.03 * exact.norm()
