"""``diffeat extract`` beyond one process: ``--shard I/N`` writes block I's features to
``OUT-0000I-of-0000N.safetensors``, the plain command's features of those images; a finished
shard is left alone; ``--check-shards`` accounts for every image from the files; in the slow
lane on a local Ray cluster, ``--ray`` writes the part files ``--shard k/K`` writes (tensors bit
for bit, the same metadata), across a killed worker, with a bad image refused alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common_kernels.runtime.batch_testing import (
    local_ray_cluster,
    noise_photos,
    run_killing_an_actor,
)
from diffeat.cli import main
from diffeat.io import load_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def command(model: Path, out: Path) -> list[str]:
    return ["--model", str(model), "--layers", "mid-vit-block0-out", "--image-size", "64",
            "-o", str(out)]  # fmt: skip


def test_shard_files_hold_the_plain_features_of_their_images(model_dirs, tmp_path, capsys):
    images = noise_photos(tmp_path / "in", 5, 64, 64)
    out = tmp_path / "f.safetensors"
    base = ["extract", str(images), *command(model_dirs["sd15"], out), "--keep-going"]
    assert main([*base, "--shard", "0/2"]) == 1  # broken.png: set aside, recorded
    assert main([*base, "--shard", "1/2"]) == 0
    first, second = (
        tmp_path / "f-00000-of-00002.safetensors",
        tmp_path / "f-00001-of-00002.safetensors",
    )
    features, meta = load_features(first)
    assert meta["images"] == [str(images / n) for n in ("img00.png", "img01.png")]
    assert meta["refused"] == {str(images / "broken.png"): "cannot identify image file "
                               f"'{images / 'broken.png'}'"}  # fmt: skip
    assert load_features(second)[1]["images"] == [
        str(images / f"img{i:02d}.png") for i in (2, 3, 4)
    ]
    # each shard file holds what the plain command gives for its images
    plain = tmp_path / "plain.safetensors"
    assert main(["extract", *meta["images"], *command(model_dirs["sd15"], plain)]) == 0
    expected, _ = load_features(plain)
    assert features.keys() == expected.keys()
    assert all(torch.equal(features[k], expected[k]) for k in features)
    capsys.readouterr()
    # a finished shard is left alone
    before = second.stat().st_mtime_ns
    assert main([*base, "--shard", "1/2"]) == 0
    assert second.stat().st_mtime_ns == before
    assert f"shard 1/2: {second} exists; nothing to do" in capsys.readouterr().err
    assert main([*base, "--check-shards", "2"]) == 1
    report = capsys.readouterr().out
    assert report.startswith("5 of 6 input(s) have their outputs, each written once\nrefused: 1")
    second.unlink()
    assert main([*base, "--check-shards", "2"]) == 1
    assert f"missing (input: its shard): 3\n  {images / 'img02.png'}: shard 1" in (
        capsys.readouterr().out
    )


def test_the_distributed_flags_exclude_each_other(model_dirs, tmp_path, refused):
    images = noise_photos(tmp_path / "in", 1, 64, 64)
    base = ["extract", str(images), *command(model_dirs["sd15"], tmp_path / "f.safetensors")]
    refused([*base, "--shard", "0/2", "--ray"], "--shard and --ray exclude each other")
    refused([*base, "--shard", "0/0"], "--shard: the shard count must be an int in [1, 99999]")


@pytest.mark.slow
def test_ray_parts_are_the_shard_files_byte_for_byte_across_a_killed_worker(
    model_dirs, tmp_path, capsys
):
    with local_ray_cluster() as local_ray:  # the slow lane installs the [ray] extra
        images = noise_photos(tmp_path / "in", 12, 64, 64)
        out = tmp_path / "ray" / "f.safetensors"
        argv = ["extract", str(images), *command(model_dirs["sd15"], out), "--ray", local_ray,
                "--ray-workers", "2", "--ray-batch", "2"]  # fmt: skip
        code, _ = run_killing_an_actor(
            main, argv, "ExtractWorker", lambda: len(list(out.parent.glob("f-*.safetensors"))) >= 1
        )
        assert code == 1  # broken.png
        text = capsys.readouterr().out
        assert "diffeat extract: 7 part file(s) (7 input(s): " in text
        assert "12 of 13 input(s) have their outputs, each written once\nrefused: 1" in text
        parts = sorted(out.parent.glob("f-*.safetensors"))
        assert [p.name for p in parts] == [f"f-0000{i}-of-00007.safetensors" for i in range(7)]
        # each part file is the one `--shard k/7` writes: the same tensors, bit for bit, and the
        # same metadata (safetensors orders a file's metadata differently in each process)
        shards = tmp_path / "shards" / "f.safetensors"
        for index in range(7):
            shard_argv = ["extract", str(images), *command(model_dirs["sd15"], shards),
                          "--keep-going", "--shard", f"{index}/7"]  # fmt: skip
            assert main(shard_argv) == (1 if index == 0 else 0)  # part 0: broken.png alone
            name = f"f-{index:05d}-of-00007.safetensors"
            (got, got_meta), (want, want_meta) = (load_features(out.parent / name),
                                                  load_features(shards.parent / name))  # fmt: skip
            assert got_meta == want_meta and got.keys() == want.keys(), name
            assert all(torch.equal(got[k], want[k]) for k in got), name
