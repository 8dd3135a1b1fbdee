"""The API owns the checks (issue 25, item 2): ``generate_cascade``, ``PixelsmithConfig`` and
``PixelsmithPipeline.from_pretrained`` refuse a bad input with the message that ``pixelsmith
generate`` prints for the same input, each argument spelled as its caller spells it, before any
model work; ``--help`` gives units, ranges and defaults; the package has no import cycle and
nothing imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import pixelsmith.cascade as cascade_module
import pixelsmith.cli as cli
import pixelsmith.memory as memory
import pixelsmith.pipelines.pixelsmith as pipeline_module
from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.imports import find_cycle, import_graph
from common_kernels.runtime.testing import numeric_flag_help
from pixelsmith import CascadeOptions, PixelsmithConfig, PixelsmithPipeline, generate_cascade
from pixelsmith.cli import FLAGS, NUMBERS, build_parser, main

SOURCE = Path(__file__).parents[1] / "src" / "pixelsmith"
SMALL = {"patch_size": 8, "band": 2, "vae_tile": 8, "vae_overlap": 2}
SMALL_FLAGS = ["--patch-size", "8", "--band", "2", "--vae-tile", "8", "--vae-overlap", "2"]
API = {name: name for name in FLAGS}


@pytest.fixture
def no_model_work(monkeypatch, no_model_load):
    """Loading a model or encoding a prompt fails the test: the checks must come first."""
    monkeypatch.setattr(PixelsmithPipeline, "encode_text", no_model_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)  # 1 MiB


# case: (generate_cascade keyword arguments, CLI arguments, message with {argument} fields)
CASES = {
    "steps": (
        {"num_inference_steps": 0},
        ["--steps", "0"],
        "{num_inference_steps} must be an int in [1, 1000] (the scheduler's training "
        "timesteps), got 0",
    ),
    "guidance": (
        {"guidance_scale": float("nan")},
        ["--guidance", "nan"],
        "{guidance_scale} must be a finite number, got nan",
    ),
    "seed": (
        {"seed": -1},
        ["--seed", "-1"],
        "{seed} must be an int in [0, 18446744073709551615], got -1",
    ),
    "checkpoint_every": (
        {"checkpoint_every": 0},
        ["--checkpoint-every", "0"],
        "{checkpoint_every} must be an int >= 1, got 0",
    ),
    "slider": ({"sliders": [3]}, ["--slider", "3"], "{sliders}[0] must be an int in [1, 2], got 3"),
    "sizes": (
        {"sizes": [128, 64]},
        ["--sizes", "128", "64"],
        "{sizes} must grow stage by stage (no side smaller than the previous stage's and not "
        "equal to it), got {sizes}[0] = 128x128 then {sizes}[1] = 64x64",
    ),
    "compression": (
        {"compression": "zlib", "output": "{t}/out.png"},
        ["--compression", "zlib", "-o", "{t}/out.png"],
        "{compression} applies to .tif/.tiff outputs only, got {output} {t}/out.png",
    ),
    "output_folder": (
        {"output": "{t}/taken.tif"},
        ["-o", "{t}/taken.tif"],
        "{output} '{t}/taken.tif' is a folder, not a file",
    ),
    "checkpoint_dir": (
        {"output": "{t}/out.tif", "checkpoint_dir": "{t}/photos"},
        ["--checkpoint-dir", "{t}/photos"],
        "{checkpoint_dir} {t}/photos holds files but no run.json: not a pixelsmith checkpoint "
        "folder, and a finished run deletes its checkpoint folder; choose another "
        "{checkpoint_dir}",
    ),
    "control_image_alone": (
        {"control_image": "{t}/photos/a.png"},
        ["--control-image", "{t}/photos/a.png"],
        "{control_image} needs {controlnet}",
    ),
    "memory": (
        {"sizes": [64, 1024]},
        ["--sizes", "64", "1024"],
        "{sizes} 1024x1024: the full-size latent maps of this stage alone need 1081344 bytes "
        "(0.00 GiB, 66 bytes per latent px), more than the 1048576 bytes (0.00 GiB) available "
        "on cpu; use smaller {sizes}, or {allow_large} to try anyway",
    ),
}


def fill(template: str, names: dict[str, str], tmp: Path) -> str:
    return template.format_map({**names, "t": tmp})


@pytest.mark.parametrize("case", sorted(CASES))
def test_generate_cascade_and_generate_give_the_same_message(
    case, tiny_dir, make_pipe, tmp_path, capsys, no_model_work
):
    (tmp_path / "taken.tif").mkdir()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"x")
    kwargs, extra, template = CASES[case]
    arguments = {"sizes": [64, 128], "sliders": [1], "num_inference_steps": 2, **kwargs}
    arguments = {
        k: fill(v, {}, tmp_path) if isinstance(v, str) else v for k, v in arguments.items()
    }
    sizes, sliders = arguments.pop("sizes"), arguments.pop("sliders")
    with pytest.raises(ValueError) as info:
        generate_cascade(
            make_pipe(), "a cat", sizes, sliders, config=PixelsmithConfig(**SMALL), **arguments
        )
    api = {**API, "allow_large": "allow_large=True"}
    assert str(info.value) == fill(template, api, tmp_path)
    argv = ["generate", "a cat", "--model", str(tiny_dir), "--sizes", "64", "128", "--slider",
            "1", "--steps", "2", "-o", str(tmp_path / "out.tif"), "--device", "cpu",
            *SMALL_FLAGS, *(fill(a, {}, tmp_path) for a in extra)]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    expected = fill(template, FLAGS, tmp_path)
    assert captured.err == f"pixelsmith generate: error: {expected}\n" and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "taken.tif"]


CONFIG_CASES = {
    "patch_size": ({"patch_size": 0}, "{patch_size} must be an int >= 1, got 0"),
    "band": ({"band": -1}, "{band} must be an int >= 0, got -1"),
    "vae_overlap": ({"vae_overlap": 128}, "{vae_overlap} must be an int in [0, 127], got 128"),
    "faithful_grid": (
        {"faithful": True, "patch_scheduler": "grid"},
        "{grid} is not available with {faithful} (the official sampler places patches at "
        "random centres); use {random} or leave it out",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_dataclass_names_the_argument_and_the_cli_its_flag(case):
    fields, template = CONFIG_CASES[case]
    api = {**API, "grid": "patch_scheduler='grid'", "faithful": "faithful=True",
           "random": "patch_scheduler='random'"}  # fmt: skip
    cli = {**FLAGS, "grid": "--scheduler grid", "random": "--scheduler random"}
    with pytest.raises(InvalidArgument) as info:
        PixelsmithConfig(**fields)
    assert str(info.value) == template.format_map(api)
    assert info.value.argument in fields
    assert info.value.for_flags(FLAGS) == template.format_map(cli)


def test_no_api_takes_the_callers_names():
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = [a.arg for a in (*node.args.args, *node.args.kwonlyargs)]
                assert "names" not in arguments, f"{path.name}: {node.name}(names=...)"


def test_help_gives_units_ranges_and_defaults_for_every_numeric_flag(generate_help):
    found = numeric_flag_help(build_parser())
    numbers = {
        ("generate", flag): f"{text} (default: {default})" for flag, _, default, text in NUMBERS
    }
    assert found == {
        **numbers,
        ("generate", "--slider"): "steps guided by the upsampled previous stage: one per stage "
        "after the first, each an int in [1, --steps] (default: none, for one size)",
        ("generate", "--lora-scale"): "LoRA weight, finite numbers: one for all LoRAs or one "
        "each (default: 1)",
        ("tiny-model", "--seed"): "torch seed of the random weights, in [0, 2**64 - 1] "
        "(default: 0)",
        ("app", "--port"): "TCP port, in [1, 65535] (default: 7860)",
    }
    assert found["generate", "--steps"] == (
        "denoising steps per stage, in [1, 1000] (the scheduler's training timesteps) (default: 50)"
    )
    assert all(
        " px" in found["generate", flag] for flag in ("--patch-size", "--band", "--vae-tile")
    )
    assert "VAE tile overlap in latent px, in [0, --vae-tile - 1] (default: 16)" in generate_help
    assert "stage sizes in px" in generate_help


def test_the_package_has_no_import_cycle_and_nothing_imports_the_cli():
    graph = import_graph(SOURCE)
    assert {"pixelsmith.cli", "pixelsmith.cascade", "pixelsmith.sources"} <= set(graph)
    assert find_cycle(graph) is None
    importers = {name for name, imports in graph.items() if "pixelsmith.cli" in imports}
    assert importers == {"pixelsmith.__main__"}
    assert (SOURCE / "cli.py").read_text().count("\n") < 450


def test_cascade_options_are_validated_when_made_naming_the_field():
    cases = {
        "seed": ({"seed": -1}, "seed must be an int in [0, 18446744073709551615], got -1"),
        "guidance_scale": ({"guidance_scale": float("inf")}, "guidance_scale must be a finite "
                           "number, got inf"),
        "checkpoint_every": ({"checkpoint_every": 0}, "checkpoint_every must be an int >= 1, "
                             "got 0"),
        "controlnet_conditioning_scale": ({"controlnet_conditioning_scale": float("nan")},
                                          "controlnet_conditioning_scale must be a finite "
                                          "number, got nan"),
    }  # fmt: skip
    for argument, (fields, message) in cases.items():
        with pytest.raises(InvalidArgument) as info:
            CascadeOptions(**fields)
        assert (info.value.argument, str(info.value)) == (argument, message)
        flag = FLAGS.get(argument, argument)
        assert info.value.for_flags(FLAGS) == message.replace(argument, flag, 1)
    with pytest.raises(TypeError, match=r"^restart must be a bool, got 'yes'$"):
        CascadeOptions(restart="yes")
    options = CascadeOptions(num_inference_steps=4, config=None)
    assert options.config == PixelsmithConfig()
    assert options.replace(seed=1) == CascadeOptions(num_inference_steps=4, seed=1)


def test_generate_cascade_takes_options_or_their_fields_not_both(make_pipe):
    with pytest.raises(TypeError, match=r"^give options or its fields, not both \(got seed\)$"):
        generate_cascade(make_pipe(), "a cat", [64], [], CascadeOptions(), seed=1)


def test_generate_checks_each_input_once_before_loading(tiny_dir, tmp_path, monkeypatch):
    """The command runs the API's checks once, before the model loads, and hands their plans
    on: the pipeline loads the checked LoadPlan and run_cascade runs the checked CascadePlan
    (no second check_cascade, no second check_from_pretrained)."""
    calls: list[str] = []
    for name in ("check_cascade", "check_from_pretrained", "check_lora_options"):
        real = getattr(cli, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(cli, name, counted)
    monkeypatch.setattr(pipeline_module, "check_from_pretrained", lambda *a: calls.append("again"))
    ran = {}

    def run_cascade(pipe, prompts, plan, **kwargs):
        ran.update(prompt=prompts.prompt, plan=plan, pipe=type(pipe).__name__)
        return plan.output

    monkeypatch.setattr(cascade_module, "run_cascade", run_cascade)
    output = tmp_path / "out.png"
    argv = ["generate", "a cat", "--model", str(tiny_dir), "--sizes", "64", "128", "--slider",
            "1", "--steps", "2", "-o", str(output), "--device", "cpu", "--quiet",
            *SMALL_FLAGS]  # fmt: skip
    assert main(argv) == 0
    assert calls == ["check_from_pretrained", "check_lora_options", "check_cascade"]
    plan = ran["plan"]
    assert (ran["prompt"], ran["pipe"]) == ("a cat", "PixelsmithPipeline")
    assert (plan.sizes, plan.sliders, plan.output) == ([(64, 64), (128, 128)], [1], output)
    assert plan.options.num_inference_steps == 2 and plan.options.config.patch_size == 8


def test_patch_batch_and_vae_tile_memory_checks_name_their_arguments(tiny_dir, monkeypatch):
    """check_cascade bounds ``patch_batch_size`` by one UNet call's activations and
    ``vae_tile`` by one tile's decoder activations, with the widths of the model's configs."""
    from pixelsmith.options import check_cascade
    from pixelsmith.sources import check_from_pretrained

    shape = check_from_pretrained(tiny_dir).shape
    assert (shape.unet_widths, shape.vae_widths) == ((4, 8, 16), (4, 4, 4, 4))
    config = PixelsmithConfig(**SMALL, patch_batch_size=3)
    options = CascadeOptions(num_inference_steps=2, config=config)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 6 * 64 * 252 - 1)
    with pytest.raises(InvalidArgument) as refused:
        check_cascade([64, 128], [2], options, shape=shape, device=torch.device("cpu"))
    assert refused.value.argument == "patch_batch_size"
    assert str(refused.value).startswith(
        "patch_batch_size 3: one UNet call on 3 patches of 8x8 latent px (6 samples with "
        "guidance) needs an estimated 96768 bytes (0.00 GiB, 252 bytes per latent px of a "
        "sample) of activations, more than the 96767 bytes (0.00 GiB) available on cpu"
    )
    options = CascadeOptions(num_inference_steps=2, config=config, guidance_scale=1.0)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 * 8500 - 1)
    with pytest.raises(InvalidArgument) as refused:  # no guidance: 3 samples pass
        check_cascade([64, 128], [2], options, shape=shape, device=torch.device("cpu"))
    assert refused.value.argument == "vae_tile"
    assert "vae_tile 8: decoding one 8x8 latent px tile needs an estimated 544000 " in str(
        refused.value
    )
