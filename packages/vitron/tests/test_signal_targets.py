# ruff: noqa: E501
"""Stage-3 targets built from the tiny specialists: equal to the specialists' conditioning
restated without the adapters (conftest's ``expected_target``: open_clip's template-averaged
text embedding, the diffusion text encoder's end-of-text state), read by stage-3 training, and
the ``vitron build-targets`` command.

Tolerance against the restatement: atol 1e-6, rtol 1e-5 (fp32; the restatement encodes the
prompt unpadded and in its own batch, so the rounding may differ). The reader and the file
are compared exactly.
"""

from __future__ import annotations

import json
import re

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitron.cli import main
from vitron.specialists import SpecialistRegistry
from vitron.tiny import tiny_model
from vitron.training import ConversationDataset, build_signal_targets, stage_processor, train

CALLS = {"version": 1, "calls": [
    {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}},
    {"id": "edit", "task": "edit_image", "args": {"image": "$image0", "mask": "$seg.mask", "text": "a red cat"}},
    {"id": "fix", "task": "restore_image", "args": {"image": "$edit.image"}},
]}  # fmt: skip
DRAW = {"version": 1, "calls": [
    {"id": "gen", "task": "generate_image", "args": {"text": "a cat"}},
    {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}},
]}  # fmt: skip


def record(calls: dict, **extra) -> str:
    return json.dumps({**extra, "images": ["img.png"], "conversations": [
        {"from": "human", "value": "<image>\nDo it."},
        {"from": "gpt", "value": "On it.", "calls": calls},
        {"from": "results", "value": "[seg] ok"}, {"from": "gpt", "value": "Done."}]})  # fmt: skip


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    path = tmp_path / "stage3.jsonl"
    path.write_text(record(CALLS, id="r1") + "\n" + record(DRAW) + "\n")
    return path


TARGET_TOLERANCE = {"atol": 1e-6, "rtol": 1e-5}


@pytest.fixture(scope="module")
def direct(expected_target):
    """Each (task, text)'s target, restated from the saved specialists without the adapters."""
    pairs = {("segment_image", "dog"), ("edit_image", "a red cat"), ("generate_image", "a cat")}
    return {(task, text): expected_target(task, text) for task, text in pairs}


def test_built_targets_equal_conditioning_target(
    data, tmp_path, specialist_options, direct, capsys
):
    index_path = build_signal_targets(data, SpecialistRegistry(specialist_options), tmp_path / "t")
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "targets.json",
        "targets.safetensors",
    ]
    index = json.loads(index_path.read_text())
    assert (
        index["format"] == 1
        and index["data"] == "stage3.jsonl"
        and index["tensors"] == "targets.safetensors"
    )
    assert index["records"] == {
        "r1": {
            "seg": {"tensor": "r1/seg", "task": "segment_image", "specialist": "itaclip", "text": "dog"},
            "edit": {"tensor": "r1/edit", "task": "edit_image", "specialist": "diffusers-inpaint", "text": "a red cat"},
        },  # restore_image takes no signal: no target
        "line 2": {
            "gen": {"tensor": "line 2/gen", "task": "generate_image", "specialist": "diffusers-image", "text": "a cat"},
            "seg": {"tensor": "line 2/seg", "task": "segment_image", "specialist": "itaclip", "text": "dog"},
        },
    }  # fmt: skip
    tensors = load_file(tmp_path / "t" / "targets.safetensors")
    assert sorted(tensors) == ["line 2/gen", "line 2/seg", "r1/edit", "r1/seg"]
    for entries in index["records"].values():
        for entry in entries.values():
            expected = direct[entry["task"], entry["text"]]
            assert (
                tensors[entry["tensor"]].shape == (16,)
                and tensors[entry["tensor"]].dtype == torch.float32
            )
            torch.testing.assert_close(
                tensors[entry["tensor"]], expected, **TARGET_TOLERANCE, msg=entry["tensor"]
            )
    # the three texts give three different targets (a target of the wrong text would show)
    assert not torch.allclose(tensors["r1/seg"], tensors["line 2/gen"])
    assert not torch.allclose(tensors["r1/edit"], tensors["line 2/gen"])
    # the progress (common_kernels.runtime.progress): in a log, one line when done
    assert re.search(r"^targets: 4/4 calls \(100%\), \d+ s$", capsys.readouterr().err, re.M)


def test_stage3_training_reads_the_targets(data, tmp_path, specialist_options):
    index_path = build_signal_targets(
        data, SpecialistRegistry(specialist_options), tmp_path / "t", progress=False
    )
    stored = load_file(tmp_path / "t" / "targets.safetensors")
    model = tiny_model(seed=0)
    dataset = ConversationDataset(data, stage_processor(model, 3), signal_targets=index_path)
    first, second = dataset[0], dataset[1]
    assert first.signal_tasks == ("segment_image", "edit_image", "restore_image")
    assert torch.equal(first.signal_targets[0], stored["r1/seg"])
    assert torch.equal(first.signal_targets[1], stored["r1/edit"])
    assert first.signal_targets[2] is None
    assert second.signal_tasks == ("generate_image", "segment_image")
    assert torch.equal(second.signal_targets[0], stored["line 2/gen"])
    assert torch.equal(second.signal_targets[1], stored["line 2/seg"])

    logged: list[dict] = []

    class Metrics(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            logged.append({k: float(v) for k, v in trainer.logged_metrics.items()})

    result = train(
        model, data, tmp_path / "out", stage=3, max_steps=3, batch_size=2, lr=1e-2,
        signal_targets=index_path, checkpoints=False, accelerator="cpu", enable_progress_bar=False,
        callbacks=[Metrics()],
    )  # fmt: skip
    assert all("train/align_loss" in m for m in logged) and len(logged) == 3
    assert logged[-1]["train/align_loss"] < logged[0]["train/align_loss"]
    assert result["last_loss"] < result["first_loss"]


def test_a_targets_index_of_another_file_is_refused(data, tmp_path, specialist_options):
    index_path = build_signal_targets(
        data, SpecialistRegistry(specialist_options), tmp_path / "t", progress=False
    )
    processor = stage_processor(tiny_model(), 3)
    other = tmp_path / "other.jsonl"
    other.write_text(record(DRAW, id="zz") + "\n")
    with pytest.raises(
        ValueError,
        match=r"targets\.json has targets of records that .*other\.jsonl lacks, e\.g\. \['line 2', 'r1'\] \(built from another data file\?\)",
    ):
        ConversationDataset(other, processor, signal_targets=index_path)
    both = tmp_path / "both.jsonl"
    both.write_text(
        record(CALLS, id="r1", signal_targets="x.safetensors") + "\n" + record(DRAW) + "\n"
    )
    with pytest.raises(
        ValueError,
        match=r"both\.jsonl:1: the record has signal_targets of its own and in .*targets\.json; keep one",
    ):
        ConversationDataset(both, processor, signal_targets=index_path)
    (tmp_path / "bad.json").write_text('{"format": 7}')
    with pytest.raises(ValueError, match=r"bad\.json is not a signal targets index of format 1"):
        ConversationDataset(data, processor, signal_targets=tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [record(DRAW, id="a"), record(DRAW, id="a")],
            r"stage3\.jsonl:2: id 'a' is also the id of line 1",
        ),
        (
            [
                record(
                    {
                        "version": 1,
                        "calls": [
                            {"id": "fix", "task": "restore_image", "args": {"image": "$image0"}}
                        ],
                    }
                )
            ],
            r"stage3\.jsonl has no call that takes a signal .*: nothing to build",
        ),
        (
            [
                record(
                    {
                        "version": 1,
                        "calls": [
                            {
                                "id": "s",
                                "task": "segment_image",
                                "args": {"image": "$image1", "text": "x"},
                            }
                        ],
                    }
                )
            ],
            r"stage3\.jsonl:1: conversations\[1\]\.calls: calls\[0\]\.args\.image: \$image1 does not exist",
        ),
    ],
)
def test_bad_data_writes_nothing(tmp_path, specialist_options, lines, message):
    path = tmp_path / "stage3.jsonl"
    path.write_text("\n".join(lines) + "\n")
    registry = SpecialistRegistry(specialist_options)
    with pytest.raises(ValueError, match=message):
        build_signal_targets(path, registry, tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert not registry.instances or not any(s.loaded for s in registry.instances.values())


def test_build_targets_command(data, tmp_path, specialists_file, direct, capsys):
    out = tmp_path / "targets"
    status = main(
        [
            "build-targets",
            "--data",
            str(data),
            "--specialists",
            str(specialists_file),
            "-o",
            str(out),
            "--device",
            "cpu",
            "--no-offload",
        ]
    )
    assert status == 0
    assert (
        capsys.readouterr().out.strip()
        == f"signal targets of 4 call(s) in 2 record(s) written to {out / 'targets.json'}"
    )
    tensors = load_file(out / "targets.safetensors")
    torch.testing.assert_close(
        tensors["r1/edit"], direct["edit_image", "a red cat"], **TARGET_TOLERANCE
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(record(DRAW, id="a") + "\n" + record(DRAW, id="a") + "\n")
    assert (
        main(
            [
                "build-targets",
                "--data",
                str(bad),
                "--specialists",
                str(specialists_file),
                "-o",
                str(tmp_path / "no"),
            ]
        )
        == 2
    )
    assert (
        "vitron build-targets: error: " in capsys.readouterr().err
        and not (tmp_path / "no").exists()
    )
    assert (
        main(
            ["build-targets", "--data", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "no")]
        )
        == 2
    )
    assert (
        capsys.readouterr().err.strip()
        == f"vitron build-targets: error: --data {tmp_path / 'missing.jsonl'} does not exist"
    )


def test_build_signal_targets_checks_its_paths_first(data, tmp_path, specialist_options):
    from common_kernels.runtime.errors import InvalidArgument

    registry = SpecialistRegistry(specialist_options)
    with pytest.raises(InvalidArgument) as error:
        build_signal_targets(tmp_path / "missing.jsonl", registry, tmp_path / "out")
    assert error.value.argument == "data"
    assert str(error.value) == f"data {tmp_path / 'missing.jsonl'} does not exist"
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InvalidArgument) as error:
        build_signal_targets(data, registry, tmp_path / "file.txt" / "out")
    assert error.value.argument == "output"
    assert not (tmp_path / "out").exists()


def test_train_command_takes_signal_targets(data, tmp_path, specialist_options, capsys):
    index_path = build_signal_targets(
        data, SpecialistRegistry(specialist_options), tmp_path / "t", progress=False
    )
    tiny_model(seed=0).save_pretrained(tmp_path / "m")
    status = main([
        "train", "--model", str(tmp_path / "m"), "--data", str(data), "--stage", "3", "-o", str(tmp_path / "out"),
        "--signal-targets", str(index_path), "--max-steps", "1", "--batch-size", "2", "--accelerator", "cpu",
    ])  # fmt: skip
    assert status == 0 and "stage 3: loss" in capsys.readouterr().out
    assert (tmp_path / "out" / "model.safetensors").is_file()
