"""The node pack in a real ComfyUI: listed in ``/object_info``; the workflows of
``comfyui/workflows`` (the docs' graphs) run through ``/prompt`` and their saved images equal the
packages' APIs on the same inputs, within one 8-bit level (ComfyUI's SaveImage truncates
``255 * x`` to uint8, and the tests truncate the API's output the same way); bad inputs come
back as ComfyUI's node errors naming the input, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import numpy as np
import pytest
import requests
import torch
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from harness import Comfy

PACK = Path(__file__).resolve().parents[1]
WORKFLOWS = PACK / "workflows"
NODES = ("SemanIRRestore", "SemanIRDegrade", "ITACLIPLoader", "ITACLIPSegment", "PixelsmithLoader",
         "PixelsmithCascade", "PixelsmithUpscale", "PixelsmithSampler", "DiffeatLoader",
         "DiffeatPCA")  # fmt: skip


def workflow(name: str, image: str | None = None) -> dict:
    """A graph of ``comfyui/workflows`` as the docs give it, with the uploaded ``image``."""
    graph = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for node in graph.values():
        if node["class_type"] == "LoadImage" and image is not None:
            node["inputs"]["image"] = image
    return graph


def saved(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (H, W) floats -> the uint8 (H, W[, C]) array ComfyUI's SaveImage writes."""
    array = x.permute(1, 2, 0).numpy() if x.ndim == 3 else x.numpy()
    return np.clip(255.0 * array, 0, 255).astype(np.uint8)


def loaded(path: Path) -> torch.Tensor:
    """The (3, H, W) float32 image ComfyUI's LoadImage gives for ``path``."""
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    return torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0).permute(2, 0, 1)


def assert_within_one_level(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    difference = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1, f"{(difference > 1).sum()} values differ by more than 1 level"


def test_the_nodes_are_listed_with_their_inputs(comfy: Comfy) -> None:
    info = requests.get(f"{comfy.url}/object_info", timeout=60).json()
    assert set(NODES) <= set(info)
    restore = info["SemanIRRestore"]["input"]["required"]
    assert restore["task"][0] == ["denoise", "jpeg", "sr"]
    assert restore["model"][0][0] == "auto" and "semanir_tiny_sr_x4" in restore["model"][0]
    assert info["ITACLIPSegment"]["output_name"] == ["masks", "label_map", "class_names"]
    # the page shows each node's docstring, on one line
    assert info["SemanIRRestore"]["description"].startswith(
        "Denoise, remove JPEG artefacts or upscale x4 every image of a batch with SemanIR (or "
    )
    assert info["ITACLIPLoader"]["input"]["required"]["model"][0][0] == "tiny-clip"
    diffusers = info["PixelsmithLoader"]["input"]["required"]["model"][0]
    assert {"tiny-sdxl", "tiny-sd15"} <= set(diffusers)
    # the core loader lists what `semanir upscale-models` wrote
    files = info["UpscaleModelLoader"]["input"]["required"]["model_name"][1]["options"]
    assert {f"{m}.safetensors" for m in ("semanir_tiny_sr_x4", "semanir_tiny_jpeg_gray")} <= set(
        files
    )


@pytest.mark.parametrize(
    "model",
    ["semanir_tiny_sr_x4", "semanir_tiny_jpeg_gray", "semanir_tiny_denoise_gray",
     "semanir_tiny_denoise_color"],
)  # fmt: skip
def test_core_upscale_nodes_run_semanir_files_as_semanir_restores(
    comfy: Comfy, example: tuple[str, Path], model: str
) -> None:
    from common_kernels.runtime.photos import Photo
    from semanir import load_model
    from semanir.batch import restore_photo

    graph = workflow("semanir_upscale_core", example[0])
    graph["2"]["inputs"]["model_name"] = f"{model}.safetensors"
    (got,) = comfy.images(comfy.run(graph), "4")
    net = load_model(model)
    expected = restore_photo(net, Photo(loaded(example[1])), tile=None).pixels
    assert got.shape == (40 * net.upscale, 56 * net.upscale, 3)
    assert_within_one_level(got, saved(expected))


def test_degrade_then_restore_equals_the_api(comfy: Comfy, example: tuple[str, Path]) -> None:
    from common_kernels.runtime.photos import Photo
    from semanir import load_model
    from semanir.batch import restore_photo
    from semanir.data.degradations import add_gaussian_noise

    entry = comfy.run(workflow("semanir_restore", example[0]))
    (noisy_got,) = comfy.images(entry, "5")
    (restored_got,) = comfy.images(entry, "4")
    clean = loaded(example[1])
    noisy = add_gaussian_noise(clean[None], 25.0, torch.Generator().manual_seed(0))[0].clamp(0, 1)
    assert_within_one_level(noisy_got, saved(noisy))
    restored = restore_photo(load_model("semanir_tiny_denoise_color"), Photo(noisy)).pixels
    assert_within_one_level(restored_got, saved(restored))


@pytest.mark.parametrize(
    ("inputs", "expected_model", "colour"),
    [({"task": "jpeg", "model": "auto"}, "semanir_tiny_jpeg_gray", "luma"),
     ({"task": "denoise", "model": "semanir_tiny_denoise_gray", "colour": "per-channel"},
      "semanir_tiny_denoise_gray", "per-channel"),
     ({"task": "sr", "model": "auto", "tile": 16, "tile_overlap": 4}, "semanir_tiny_sr_x4",
      "luma")],
)  # fmt: skip
def test_restore_node_options_equal_the_api(
    comfy: Comfy, example: tuple[str, Path], inputs: dict, expected_model: str, colour: str
) -> None:
    from common_kernels.runtime.photos import Photo
    from semanir import load_model
    from semanir.batch import restore_photo

    graph = workflow("semanir_restore", example[0])
    graph["3"]["inputs"].update(inputs, image=["1", 0])  # the clean image this time
    (got,) = comfy.images(comfy.run(graph), "4")
    tiling = {"tile": inputs.get("tile") or "auto", "tile_overlap": inputs.get("tile_overlap", 32)}
    photo = Photo(loaded(example[1]))
    expected = restore_photo(load_model(expected_model), photo, colour=colour, **tiling).pixels
    assert_within_one_level(got, saved(expected))


def test_jpeg_degradation_equals_the_api(comfy: Comfy, example: tuple[str, Path]) -> None:
    from semanir.data.degradations import jpeg_compress

    graph = workflow("semanir_restore", example[0])
    graph["2"]["inputs"].update(degradation="jpeg", quality=20)
    (got,) = comfy.images(comfy.run(graph), "5")
    assert_within_one_level(got, saved(jpeg_compress(loaded(example[1]), 20)))


def test_itaclip_masks_and_label_map_equal_the_api(comfy: Comfy, example: tuple[str, Path]) -> None:
    from itaclip import Segmenter
    from itaclip.viz import palette

    entry = comfy.run(workflow("itaclip_masks", example[0]))
    masks = comfy.images(entry, "5")
    (label_map,) = comfy.images(entry, "6")
    segmenter = Segmenter.from_pretrained(str(comfy.models / "open_clip" / "tiny-clip"), None,
                                          preset=None)  # fmt: skip
    result = segmenter(loaded(example[1]), ["sky", "tree", "person,man"])
    assert len(masks) == 3  # one per class, in class order
    for index, mask in enumerate(masks):
        assert np.array_equal(mask[..., 0], saved((result.labels == index).float()))
    colours = palette(3)[result.labels.numpy()]  # (H, W, 3)
    assert_within_one_level(label_map, colours)
    assert sum((mask[..., 0] == 255).sum() for mask in masks) == 40 * 56  # a class per pixel


def test_diffeat_pca_equals_the_api(comfy: Comfy, example: tuple[str, Path]) -> None:
    from diffeat import FeatureExtractor
    from diffeat.viz import pca_rgb

    (got,) = comfy.images(comfy.run(workflow("diffeat_pca", example[0])), "4")
    extractor = FeatureExtractor.from_pretrained(
        comfy.models / "diffusers" / "tiny-sd15", layers="all", timestep=50, image_size=64,
        output_device="cpu",
    )  # fmt: skip
    layer = "down-level0-repeat0-res-out"
    feature = extractor(loaded(example[1])[None], "a photo", layers=[layer])[layer]
    expected = pca_rgb(feature.float(), (64, 64))[0]  # (64, 64, 3) uint8
    assert_within_one_level(got, expected)


def test_pixelsmith_cascade_equals_the_api(comfy: Comfy) -> None:
    from pixelsmith import PixelsmithConfig, PixelsmithPipeline, generate_cascade

    (got,) = comfy.images(comfy.run(workflow("pixelsmith_cascade")), "3")
    pipe = PixelsmithPipeline.from_pretrained(comfy.models / "diffusers" / "tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    image = generate_cascade(
        pipe, "a lighthouse on a cliff", ["256", "512"], [1], num_inference_steps=2,
        guidance_scale=7.5, seed=0, config=PixelsmithConfig(patch_size=32), progress=False,
    )  # fmt: skip
    expected = np.asarray(image.convert("RGB"))
    assert got.shape == (512, 512, 3)
    assert_within_one_level(got, expected)


def node_errors(comfy: Comfy, graph: dict) -> dict:
    """The node errors ComfyUI finds before running a graph (HTTP 400 when no output is left to
    run; else it runs the outputs that do not depend on a refused node, and says which were)."""
    reply = comfy.submit(graph)
    assert reply.status_code in (200, 400), reply.text
    errors = reply.json()["node_errors"]
    assert errors, reply.text
    return errors


def test_refused_inputs_name_the_input_before_the_graph_runs(
    comfy: Comfy, example: tuple[str, Path]
) -> None:
    graph = workflow("semanir_restore", example[0])
    graph["3"]["inputs"]["model"] = "absent.safetensors"
    messages = {e["details"] for e in node_errors(comfy, graph)["3"]["errors"]}
    assert any("model: 'absent.safetensors' is not one of auto, semanir_tiny_" in m
               for m in messages), messages  # fmt: skip

    graph["3"]["inputs"].update(model="auto", tile=4)
    messages = {e["details"] for e in node_errors(comfy, graph)["3"]["errors"]}
    assert any(
        "tile: must be an int >= the model's window size 8 (pixels), got 4" in m for m in messages
    ), messages

    graph["3"]["inputs"].update(tile=0, task="sr", model="semanir_tiny_denoise_color")
    messages = {e["details"] for e in node_errors(comfy, graph)["3"]["errors"]}
    assert any("the model keeps the image size, which does not fit task='sr'" in m
               for m in messages), messages  # fmt: skip

    graph = workflow("pixelsmith_cascade")
    graph["2"]["inputs"]["sliders"] = "one"
    messages = {e["details"] for e in node_errors(comfy, graph)["2"]["errors"]}
    assert any("sliders: must be ints separated by commas, got 'one'" in m for m in messages)

    graph = workflow("itaclip_masks", example[0])
    graph["3"]["inputs"]["classes"] = "\n \n"
    messages = {e["details"] for e in node_errors(comfy, graph)["3"]["errors"]}
    assert any("classes: give at least one class, one per line" in m for m in messages)


@pytest.mark.parametrize(
    ("name", "node", "inputs", "message"),
    [("semanir_upscale_core", "2", {"model_name": "absent.safetensors"}, "absent.safetensors"),
     ("itaclip_masks", "3", {"background": "ocean"}, "background"),
     ("pixelsmith_cascade", "2", {"sizes": "256, 500"},
      "sizes[1] must be multiples of the VAE scale factor 8, got 500x500"),
     ("pixelsmith_cascade", "2", {"sliders": "3"}, "sliders"),
     ("diffeat_pca", "3", {"layer": "no-such-layer"}, "no-such-layer"),
     # the image's own size: twice 40x56 is under one 32-latent-px patch
     ("pixelsmith_upscale", "3", {"height": 0, "width": 0},
      "height and width must be at least one patch (256 px), got 80x112")],
)  # fmt: skip
def test_failures_while_running_are_node_errors_and_the_server_keeps_serving(
    comfy: Comfy, example: tuple[str, Path], name: str, node: str, inputs: dict, message: str
) -> None:
    graph = workflow(name, example[0])
    graph[node]["inputs"].update(inputs)
    error = comfy.error(comfy.run(graph))
    assert error["node_id"] == node
    assert message in error["exception_message"], error["exception_message"]
    assert requests.get(f"{comfy.url}/object_info/SemanIRRestore", timeout=30).ok


async def interrupt_at_progress(comfy: Comfy, graph: dict, node: str) -> str:
    """Queue ``graph``; press cancel (``/interrupt``) once ``node`` has reported progress on
    ComfyUI's websocket (its bar moved: it is running). Returns the prompt id."""
    client = uuid.uuid4().hex
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{comfy.url.replace('http', 'ws')}/ws?clientId={client}") as socket,
    ):
        async with session.post(f"{comfy.url}/prompt",
                                json={"prompt": graph, "client_id": client}) as reply:  # fmt: skip
            prompt = (await reply.json())["prompt_id"]
        async for message in socket:
            event = json.loads(message.data) if message.type == aiohttp.WSMsgType.TEXT else {}
            if event.get("type") == "progress" and event["data"].get("node") == node:
                break
        async with session.post(f"{comfy.url}/interrupt") as reply:
            reply.raise_for_status()
    return prompt


def test_cancel_stops_the_cascade_between_steps_and_writes_nothing(comfy: Comfy) -> None:
    graph = workflow("pixelsmith_cascade")
    graph["2"]["inputs"].update(steps=200, sliders="200", seed=1)
    graph["3"]["inputs"]["filename_prefix"] = "cancelled"
    entry = comfy.wait(asyncio.run(interrupt_at_progress(comfy, graph, "2")))
    assert entry["status"]["status_str"] == "error"
    messages = dict(entry["status"]["messages"])
    assert messages["execution_interrupted"]["node_id"] == "2"  # stopped inside the cascade
    assert "execution_success" not in messages
    assert not list(comfy.output.glob("cancelled*"))  # nothing written
    after = comfy.run(workflow("pixelsmith_cascade"))  # the next run is whole
    assert comfy.images(after, "3")[0].shape == (512, 512, 3)


def test_pixelsmith_upscale_of_a_graph_image_equals_the_api(
    comfy: Comfy, example: tuple[str, Path]
) -> None:
    from pixelsmith import PixelsmithConfig, PixelsmithPipeline

    (got,) = comfy.images(comfy.run(workflow("pixelsmith_upscale", example[0])), "4")
    pipe = PixelsmithPipeline.from_pretrained(comfy.models / "diffusers" / "tiny-sdxl")
    result = pipe(
        "a comic drawing", loaded(example[1]), slider=1, height=256, width=352,
        num_inference_steps=2, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
        config=PixelsmithConfig(patch_size=32), output_type="pt", progress=False,
    )  # fmt: skip
    assert got.shape == (256, 352, 3)
    assert_within_one_level(got, saved(result.images[0]))


SDXL_LATENT_SCALE = 0.13025  # ComfyUI's SDXL latent format: LATENT * scale = the UNet's latents


def reference_pipeline(comfy: Comfy, lora_strength: float) -> object:
    """Pixelsmith's pipeline on the tiny checkpoint's weights as diffusers and transformers
    load them, the LoRA merged by its definition (W + strength * up @ down, alpha = rank), and
    ComfyUI's CLIP tokenizer (the second one padding with "!", as SDXL's)."""
    import safetensors.torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from pixelsmith import PixelsmithPipeline
    from pixelsmith.pipelines.stage import ddim_from_config
    from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG, tiny_components

    unet = UNet2DConditionModel.from_pretrained(comfy.reference / "unet")
    pairs = safetensors.torch.load_file(comfy.reference / "lora.safetensors")
    weights = dict(unet.named_parameters())
    with torch.no_grad():
        for key, down in pairs.items():
            if key.endswith(".lora_down.weight"):
                name = key.removesuffix(".lora_down.weight")
                up = pairs[f"{name}.lora_up.weight"]
                weights[f"{name}.weight"] += lora_strength * up @ down
    tokenizer = comfy.root / "comfy" / "sd1_tokenizer"
    parts = tiny_components()  # its VAE only says the latents' channels and scale factor
    parts.update(
        unet=unet,
        text_encoder=CLIPTextModel.from_pretrained(comfy.reference / "text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            comfy.reference / "text_encoder_2"
        ),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer, model_max_length=77),
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer, model_max_length=77, pad_token="!"),
        scheduler=ddim_from_config(dict(SDXL_SCHEDULER_CONFIG)),
    )
    return PixelsmithPipeline(**parts, add_watermarker=False)


def reference_stage(pipe: object, guidance: torch.Tensor) -> torch.Tensor:
    """The workflow's Pixelsmith stage through the package's API, as a LATENT."""
    from pixelsmith import PixelsmithConfig

    result = pipe(
        "a photo of a lighthouse", negative_prompt="", slider=3, num_inference_steps=4,
        guidance_scale=5.0, guidance_latents=guidance * SDXL_LATENT_SCALE,
        generator=torch.Generator().manual_seed(0), config=PixelsmithConfig(patch_size=8),
        output_type="latent", progress=False,
    )  # fmt: skip
    return result.latents / SDXL_LATENT_SCALE


def save_latent(graph: dict, node: str, source: str) -> None:
    inputs = {"samples": [source, 0], "filename_prefix": f"latents/{node}"}
    graph[node] = {"class_type": "SaveLatent", "inputs": inputs}


def test_pixelsmith_sampler_on_comfyuis_checkpoint_and_lora_equals_the_api(comfy: Comfy) -> None:
    graph = workflow("pixelsmith_model")
    save_latent(graph, "90", "9")  # the guidance ComfyUI's VAE Encode made
    save_latent(graph, "91", "10")  # the stage
    entry = comfy.run(graph)
    (image,) = comfy.images(entry, "12")
    assert image.shape == (128, 128, 3)
    guidance, got = comfy.latents(entry, "90"), comfy.latents(entry, "91")
    assert got.shape == guidance.shape == (1, 4, 16, 16)
    expected = reference_stage(reference_pipeline(comfy, lora_strength=0.8), guidance)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # the LoRA is really in: without it the stage is another
    plain = reference_stage(reference_pipeline(comfy, lora_strength=0.0), guidance)
    assert (plain - got).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("insert", "message"),
    [({"class_type": "FreeU_V2", "inputs": {"model": ["2", 0], "b1": 1.3, "b2": 1.4, "s1": 0.9,
       "s2": 0.2}, "into": ("model", 0)},
      "model: carries patches that hook into ComfyUI's samplers "
      "(transformer_options.patches), which Pixelsmith's sampler does not run"),
     ({"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["2", 0], "sampling":
       "v_prediction", "zsnr": False}, "into": ("model", 0)},
      "model: must predict noise (eps), as Pixelsmith's DDIM step does; got V_PREDICTION"),
     ({"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["2", 0], "sampling": "eps",
       "zsnr": True}, "into": ("model", 0)},
      "model: must have SDXL's noise schedule"),
     ({"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["3", 0], "width": 64,
       "height": 64, "x": 0, "y": 0, "strength": 1.0}, "into": ("positive", 0)},
      "positive: carries area, which Pixelsmith's patches do not apply"),
     ({"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["4", 0],
       "conditioning_2": ["4", 0]}, "into": ("negative", 0)},
      "negative: must be one conditioning (no combined or area conditionings), got 2"),
     ({"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["9", 0], "mask": ["80", 0]},
       "into": ("latent", 0)},
      "latent: has a noise mask (Set Latent Noise Mask), which Pixelsmith's stage does not "
      "apply"),
     ({"class_type": None, "inputs": {"slider": 9}, "into": None},
      "slider must be an int in [1, 4]")],
)  # fmt: skip
def test_pixelsmith_sampler_refuses_what_it_would_not_honour(
    comfy: Comfy, insert: dict, message: str
) -> None:
    graph = workflow("pixelsmith_model")
    if insert["class_type"] is None:
        graph["10"]["inputs"].update(insert["inputs"])
    else:
        graph["80"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128,
                       "height": 128}}  # fmt: skip
        graph["81"] = {"class_type": insert["class_type"], "inputs": insert["inputs"]}
        name, index = insert["into"]
        graph["10"]["inputs"][name] = ["81", index]
    error = comfy.error(comfy.run(graph))
    assert error["node_id"] == "10"
    assert message in error["exception_message"], error["exception_message"]


def test_cancel_stops_the_pixelsmith_sampler_between_steps(comfy: Comfy) -> None:
    graph = workflow("pixelsmith_model")
    graph["10"]["inputs"].update(steps=400, slider=400, seed=1)
    graph["12"]["inputs"]["filename_prefix"] = "cancelled_sampler"
    entry = comfy.wait(asyncio.run(interrupt_at_progress(comfy, graph, "10")))
    messages = dict(entry["status"]["messages"])
    assert messages["execution_interrupted"]["node_id"] == "10"  # stopped inside the sampler
    assert "execution_success" not in messages
    assert not list(comfy.output.glob("cancelled_sampler*"))
