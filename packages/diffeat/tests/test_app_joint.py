"""``diffeat app`` with FLUX and SD3 model folders (``diffeat tiny-model``): the page offers the
backbone's catalogue, selects the first of its default selection, computes the PCA images
and states the flow-matching sigma in place of the timestep; the command passes ``--sigma``
and ``--offload`` through (the page's logic and its Gradio layout, no browser)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffeat import PRESETS, FeatureExtractor, FluxFeatureExtractor, SD3FeatureExtractor
from diffeat.app import PcaPage, open_page
from diffeat.cli import main
from diffeat.viz import pca_rgb

SIZE = (32, 48)
KINDS = {  # kind: (extractor class, preset, catalogue length, a name of it)
    "flux": (FluxFeatureExtractor, "diffeat-flux", 402, "flux-double3-out"),
    "sd3": (SD3FeatureExtractor, "diffeat-sd3", 223, "sd3-block5-out"),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    out = {}
    for kind in KINDS:
        out[kind] = tmp_path_factory.mktemp("models") / kind
        assert main(["tiny-model", str(out[kind]), "--kind", kind]) == 0
    return out


@pytest.fixture(scope="module")
def pages(folders) -> dict[str, PcaPage]:
    return {
        kind: open_page(folder, image_size=SIZE, sigma=0.3, device="cpu")
        for kind, folder in folders.items()
    }


def photo() -> Image.Image:
    ys, xs = np.mgrid[0:40, 0:56]
    rgb = np.stack([xs * 255 // 55, ys * 255 // 39, (xs + ys) * 3 % 256], -1).astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_page_offers_the_backbones_catalogue_and_states_sigma(kind, pages):
    page = pages[kind]
    cls, preset, count, _ = KINDS[kind]
    assert type(page.extractor) is cls
    catalogue = [spec.name for spec in cls.backbone.catalogue(page.extractor.transformer)]
    assert page.choices == ["vae-out", *catalogue] and len(catalogue) == count
    assert page.default_layers == list(PRESETS[preset].layers[:2])
    assert page.extractor.plan.noise == 0.3 and page.extractor.plan.signal == 0.7
    assert page.noise == (
        "Noise level: sigma 0.3 (flow matching: x_t = (1 - sigma) x_0 + sigma eps)."
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_page_shows_the_pca_of_each_layer(kind, pages):
    page, name = pages[kind], KINDS[kind][3]
    layers = [name, "vae-out"]
    shown = page.run(photo(), layers)
    features = page.extractor(photo(), "", layers=layers)  # resized to SIZE, as the page
    assert features[name].shape == (1, 16, 2, 3)  # the 2x3 patch grid of 4x6 latents
    assert [label for _, label in shown] == [
        f"{name}: 16 channels at 2x3",
        f"vae-out: {features['vae-out'].shape[1]} channels at 4x6",
    ]
    for (image, _), layer in zip(shown, layers, strict=True):
        assert image.size == SIZE[::-1] and image.mode == "RGB"
        assert np.array_equal(np.asarray(image), pca_rgb(features[layer], SIZE)[0])


def test_a_unet_page_states_the_timestep(pipes):
    page = PcaPage(FeatureExtractor.from_pipeline(pipes["sd15"], timestep=70))
    assert page.noise == "Noise level: timestep 70."


def test_cli_app_serves_a_flux_page_with_sigma(folders, monkeypatch):
    served = {}
    monkeypatch.setattr(
        "diffeat.app.launch_blocks", lambda blocks, **options: served.update(blocks=blocks)
    )
    argv = ["app", "--model", str(folders["flux"]), "--image-size", "32x48", "--sigma", "0.4",
            "--offload", "model", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    config = served["blocks"].config
    components = {c.get("props", {}).get("elem_id"): c["props"] for c in config["components"]}
    choices = [choice[0] for choice in components["layers"]["choices"]]
    assert choices[:3] == ["vae-out", "flux-in", "flux-after-embed"] and len(choices) == 403
    assert components["layers"]["value"] == list(PRESETS["diffeat-flux"].layers[:2])
    intro = next(c["props"]["value"] for c in config["components"] if c["type"] == "markdown")
    assert "Noise level: sigma 0.4 (flow matching" in intro


def test_cli_app_refuses_sigma_for_a_unet_before_any_model_loads(model_dirs, capsys, monkeypatch):
    monkeypatch.setattr(FeatureExtractor, "from_plan", pytest.fail)
    assert main(["app", "--model", str(model_dirs["sd15"]), "--sigma", "0.3"]) == 2
    assert capsys.readouterr().err == (
        "diffeat app: error: --sigma: applies to flow-matching models (FLUX, SD3); this model's "
        "PNDMScheduler noises at a DDPM timestep, not at a sigma\n"
    )
