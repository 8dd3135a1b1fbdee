"""generate_cascade: validation, outputs, hand-over modes, checkpoints and resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from safetensors.torch import load_file

from pixelsmith import generate_cascade
from pixelsmith.io import collect_uint8

PROMPT = "a cat"
SIZES = [64, 128, (192, 160)]


class Interrupt(Exception):
    pass


def run(pipe, config, **kwargs):
    options = dict(num_inference_steps=3, seed=0, config=config, progress=False)
    options.update(kwargs)
    return generate_cascade(pipe, PROMPT, SIZES, [2, 3], **options)


def test_cascade_validation(make_pipe, small_config, tmp_path):
    pipe = make_pipe()
    cases = [
        ([60, 128], [2], r"sizes\[0\] must be multiples of the VAE scale factor 8, got 60x60"),
        (
            [128, 64],
            [2],
            r"sizes must grow stage by stage .* sizes\[0\] = 128x128 then sizes\[1\] = 64x64",
        ),
        ([64, 64], [2], "sizes must grow stage by stage"),
        ([32, 48], [1], r"sizes\[1\] = 48x48 is smaller than one patch \(64 px = patch_size 8"),
        (
            [64, 128],
            [],
            r"sliders must hold one slider per stage after the first \(1 for 2 sizes\)",
        ),
        ([64, 128], [4], r"sliders\[0\] must be an int in \[1, 3\], got 4"),
        ([], [], "sizes must be a non-empty list"),
        (["12x"], [], r"sizes: expected S or HxW \(height x width\) in pixels"),
    ]
    for sizes, sliders, message in cases:
        with pytest.raises(ValueError, match=message):
            generate_cascade(
                pipe, PROMPT, sizes, sliders, num_inference_steps=3, config=small_config
            )
    with pytest.raises(ValueError, match=r"output must end with one of \.tif"):
        generate_cascade(
            pipe, PROMPT, [64], [], output=tmp_path / "x.jpeg2000", config=small_config
        )
    with pytest.raises(ValueError, match=r"too large to return in RAM .* pass output='image\.tif'"):
        generate_cascade(pipe, PROMPT, [64, 20480], [1], num_inference_steps=3, config=small_config)
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 1"):
        generate_cascade(pipe, PROMPT, [64], [], checkpoint_every=0, config=small_config)


def test_tif_output_equals_returned_image_and_intermediates(make_pipe, small_config, tmp_path):
    image = run(make_pipe(), small_config)
    assert isinstance(image, Image.Image) and image.size == (160, 192)
    path = run(make_pipe(), small_config, output=tmp_path / "out.tif", save_intermediate=True)
    assert path == tmp_path / "out.tif"
    assert np.array_equal(tifffile.imread(path), np.asarray(image))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out.tif",
        "out_128x128.tif",
        "out_64x64.tif",
    ]  # checkpoint removed after success
    assert tifffile.imread(tmp_path / "out_128x128.tif").shape == (128, 128, 3)


def test_on_stage_gives_every_stage_its_final_latent(make_pipe, small_config):
    pipe, finished = make_pipe(), []
    image = generate_cascade(
        pipe, PROMPT, [64, (96, 128)], [2], num_inference_steps=3, config=small_config,
        on_stage=lambda stage, x: finished.append((stage, x.clone())), progress=False,
    )  # fmt: skip
    shapes = [(stage, tuple(latents.shape)) for stage, latents in finished]
    assert shapes == [(0, (1, 4, 8, 8)), (1, (1, 4, 12, 16))]
    rows = pipe.decoded_rows(finished[-1][1], config=small_config, progress=False)
    assert np.array_equal(collect_uint8(rows, 96, 128), np.asarray(image))


def test_memmap_hand_over_equals_in_ram(make_pipe, small_config, tmp_path):
    in_ram = run(make_pipe(), small_config)
    on_disk = run(
        make_pipe(), small_config.replace(max_ram_pixels=100), checkpoint_dir=tmp_path / "c"
    )
    assert np.array_equal(np.asarray(in_ram), np.asarray(on_disk))


def test_hand_over_modes_and_faithful(make_pipe, small_config):
    floats = np.asarray(run(make_pipe(), small_config)).astype(int)
    uint8 = np.asarray(run(make_pipe(), small_config.replace(handover="uint8"))).astype(int)
    faithful = np.asarray(run(make_pipe(), small_config.replace(faithful=True))).astype(int)
    posterior_mean = np.asarray(run(make_pipe(), small_config.replace(guidance_posterior="mean")))
    assert np.abs(floats - uint8).max() > 0
    assert np.abs(floats - faithful).max() > 0
    assert np.abs(floats - posterior_mean.astype(int)).max() > 0
    again = np.asarray(run(make_pipe(), small_config.replace(faithful=True))).astype(int)
    assert np.array_equal(faithful, again)  # deterministic for a seed


def test_resumed_run_equals_uninterrupted(make_pipe, small_config, tmp_path):
    reference = run(
        make_pipe(),
        small_config,
        output=tmp_path / "ref.tif",
        checkpoint_dir=tmp_path / "ref_ckpt",
        keep_checkpoint=True,
    )
    seen = []

    def interrupt_at(stage, step):
        def callback(s, n, latents, plan):
            seen.append((s, n))
            if (s, n) == (stage, step):
                raise Interrupt

        return callback

    kwargs = dict(output=tmp_path / "out.tif", keep_checkpoint=True)
    with pytest.raises(Interrupt):
        run(make_pipe(), small_config, callback=interrupt_at(1, 0), **kwargs)
    with pytest.raises(Interrupt):
        run(make_pipe(), small_config, callback=interrupt_at(2, 1), **kwargs)
    assert not (tmp_path / "out.tif").exists()
    finished = {}  # stages 0 and 1 come from the checkpoint, and are told too

    def on_stage(stage, latents):
        finished.setdefault(stage, latents.clone())

    run(make_pipe(), small_config, callback=interrupt_at(-1, -1), on_stage=on_stage, **kwargs)
    # every step ran exactly once over the three runs
    assert seen == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert np.array_equal(tifffile.imread(tmp_path / "out.tif"), tifffile.imread(reference))
    for stage in range(3):
        a = load_file(tmp_path / "ref_ckpt" / f"stage{stage}_final.safetensors")
        b = load_file(tmp_path / "out.tif.pixelsmith" / f"stage{stage}_final.safetensors")
        assert torch.equal(a["latents"], b["latents"]) and torch.equal(
            a["generator"], b["generator"]
        )
        assert torch.equal(finished[stage], a["latents"])


def test_checkpoint_settings_mismatch_and_seed_reuse(make_pipe, small_config, tmp_path):
    checkpoint = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        run(
            make_pipe(),
            small_config,
            seed=None,
            checkpoint_dir=checkpoint,
            callback=lambda s, n, x, plan: (_ for _ in ()).throw(Interrupt),
        )
    with pytest.raises(ValueError, match=r"belongs to a run with other settings \(prompt differ\)"):
        generate_cascade(
            make_pipe(),
            "a dog",
            SIZES,
            [2, 3],
            num_inference_steps=3,
            config=small_config,
            checkpoint_dir=checkpoint,
            seed=None,
            progress=False,
        )
    with pytest.raises(ValueError, match=r"\(seed differ\)"):
        run(make_pipe(), small_config, seed=12345, checkpoint_dir=checkpoint)
    recorded = json.loads((checkpoint / "run.json").read_text())["seed"]
    resumed = run(make_pipe(), small_config, seed=None, checkpoint_dir=checkpoint)
    assert not checkpoint.exists()
    # the interrupted run drew its seed; resuming with seed=None reuses it (a fresh draw would
    # give another image)
    fresh = run(make_pipe(), small_config, seed=recorded)
    assert np.array_equal(np.asarray(resumed), np.asarray(fresh))
    assert not np.array_equal(np.asarray(fresh), np.asarray(run(make_pipe(), small_config)))


def test_progress_in_a_log_is_plain_lines_for_every_stage(make_pipe, small_config, capsys):
    """stderr is not a terminal here: the base stage (diffusers' loop) and the Pixelsmith stages
    write plain lines, no tqdm bar with carriage returns."""
    pipe = make_pipe()
    pipe.set_progress_bar_config()  # what the CLI does without -q
    generate_cascade(
        pipe, PROMPT, [64, 128], [2], num_inference_steps=3, seed=0, config=small_config,
        progress=True,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert any(line.startswith("base 64x64: 3/3 steps (100%), ") for line in lines), err


def test_step_progress_counts_diffusers_updates(make_pipe, capsys):
    pipe = make_pipe()
    pipe.set_progress_bar_config(desc="base 64x64")
    with pipe.progress_bar(total=4) as bar:
        for _ in range(4):
            bar.update()
    with pipe.progress_bar(total=4) as bar:  # stopped early (an exception, Ctrl-C): no end line
        bar.update(2)
    assert list(pipe.progress_bar(["a", "b"])) == ["a", "b"]
    pipe.set_progress_bar_config(disable=True)
    with pipe.progress_bar(total=2) as bar:
        bar.update(2)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "base 64x64: 4/4 steps (100%), 0 s",
        "base 64x64: 2/2 steps (100%), 0 s",
    ]
