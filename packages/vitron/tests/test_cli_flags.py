"""Every API argument error reaches the user under the flag they typed (issue 49, item 3).

One bad value per API argument that ``vitron.cli.FLAGS`` spells as a flag, run through
``main()`` in-process: exit status 2, exactly one line ``vitron COMMAND: error: ...`` that
names the flag (never the API's argument name), and nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitron.cli import FLAGS, main

RUN = ["run", "x", "--model", "{m}", "-o", "{t}/out", "--image", "{t}/img.png"]
TRAIN = ["train", "--model", "{m}", "--data", "{t}/data.jsonl", "--stage", "2", "-o", "{t}/out"]
QA = ["eval", "qa", "--data", "{t}/data.jsonl", "--model", "{m}", "-o", "{t}/out"]
REFSEG = ["eval", "refseg", "--refs", "{t}/refs.json", "--instances", "{t}/instances.json",
          "--images", "{t}", "--model", "{m}", "-o", "{t}/out"]  # fmt: skip
VQA = ["eval", "vqa", "--questions", "{t}/questions.json", "--annotations", "{t}/answers.json",
       "--images", "{t}", "--model", "{m}", "-o", "{t}/out"]  # fmt: skip
TOKENS_LINE = (
    "--max-new-tokens 100000000: a reply of 100000000 tokens after the shortest prompt (418 "
    "positions) needs 100000418 positions, more than the 4096 positions {m} holds (its "
    "max_length); at most 3678"
)

# API argument -> (argv, the line after "vitron COMMAND: error: ")
CASES = {
    "model": (["run", "x", "--model", "{t}/nope/m", "-o", "{t}/out"],
              "--model: no Vitron folder {t}/nope/m (nothing at {t}/nope/m)"),
    "output": ([*RUN, "-o", "{t}/img.png"], "-o/--output {t}/img.png is a file, not a folder"),
    "dtype": ([*RUN, "--dtype", "fp64"], "argument --dtype: invalid choice: 'fp64' (choose from "
              "'auto', 'float32', 'bfloat16', 'float16')"),
    "device": ([*RUN, "--device", "tpu"],
               "--device tpu: expected cpu, cuda, cuda:N or mps (available: cpu)"),
    "specialists": ([*RUN, "--specialists", "{t}/list.json"],
                    "--specialists {t}/list.json must hold a JSON object of adapter name -> "
                    "options object"),
    "settings": ([*RUN, "--set", "x"], "--set takes ADAPTER.OPTION=VALUE, got 'x'"),
    "max_new_tokens": ([*RUN, "--max-new-tokens", "100000000"], TOKENS_LINE),
    "temperature": ([*RUN, "--temperature", "0"],
                    "--temperature must be a finite number > 0, got 0.0"),
    "top_p": ([*RUN, "--top-p", "2"], "--top-p must be in (0, 1], got 2.0"),
    "seed": ([*RUN, "--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    "max_rounds": ([*RUN, "--max-rounds", "0"], "--max-rounds must be >= 1, got 0"),
    "grammar": ([*RUN, "--grammar", "xml"],
                "argument --grammar: invalid choice: 'xml' (choose from 'auto', 'json', 'tags')"),
    "image": ([*RUN[:6], "--image", "{t}/nope.png"], "--image {t}/nope.png does not exist"),
    "video": ([*RUN, "--video", "{t}/nope.gif"], "--video {t}/nope.gif does not exist"),
    "box": ([*RUN, "--box", "0,0,1000,10"], "--box 0,0,1000,10 lies outside the 64x48 image"),
    "stroke": ([*RUN, "--stroke", "1,2 a,b"],
               "--stroke 1,2 a,b: expected 'x,y x,y ...' (numbers), got '1,2 a,b'"),
    "mask": ([*RUN, "--mask", "{t}/nope.png"], "--mask {t}/nope.png does not exist"),
    "stroke_width": ([*RUN, "--stroke", "1,2 3,4", "--stroke-width", "0"],
                     "--stroke-width must be a finite number > 0, got 0.0"),
    "reply_file": ([*RUN, "--reply-file", "{t}/nope.txt"],
                   "--reply-file {t}/nope.txt does not exist"),
    "in_place": ([*RUN, "--reply-file", "{t}/turn.json", "-o", "{t}"],
                 "-o/--output: {t}/turn.json would replace the input {t}/turn.json; choose another "
                 "output, or pass --in-place to replace the inputs (atomically)"),
    "port": (["app", "--model", "{m}", "-o", "{t}/out", "--port", "0"],
             "--port must be in [1, 65535], got 0"),
    "limit": ([*QA, "--limit", "0"], "--limit must be >= 1, got 0"),
    "data": ([*QA, "--data", "{t}/nope.jsonl"], "--data {t}/nope.jsonl does not exist"),
    "images": (["parse", "x", "--images", "-1"], "--images must be >= 0, got -1"),
    "videos": (["parse", "x", "--videos", "-1"], "--videos must be >= 0, got -1"),
    "region": (["parse", "x", "--region", "-1"], "--region must be >= 0, got -1"),
    "directory": (["tiny-model", "{t}/img.png"], "DIR {t}/img.png is a file, not a folder"),
    "val_data": ([*TRAIN, "--val-data", "{t}/nope.jsonl"],
                 "--val-data {t}/nope.jsonl does not exist"),
    "stage": ([*TRAIN, "--stage", "4"],
              "argument --stage: invalid choice: 4 (choose from 1, 2, 3)"),
    "max_steps": ([*TRAIN, "--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    "batch_size": ([*TRAIN, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "lr": ([*TRAIN, "--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    "lora_rank": ([*TRAIN, "--lora-rank", "-1"], "--lora-rank must be >= 0, got -1"),
    "align_weight": ([*TRAIN, "--align-weight", "-1"],
                     "--align-weight must be a finite number >= 0, got -1.0"),
    "synergy_weight": ([*TRAIN, "--synergy-weight", "-1"],
                       "--synergy-weight must be a finite number >= 0, got -1.0"),
    "accelerator": ([*TRAIN, "--accelerator", "tpu"],
                    "--accelerator tpu: expected one of auto, cpu, cuda, gpu, mps"),
    "devices": ([*TRAIN, "--devices", "0"], "--devices must be auto, a count >= 1 (-1: all), or "
                "distinct indices 0,1,...; got 0"),
    "strategy": ([*TRAIN, "--strategy", "x"], "--strategy x: expected one of auto, *"),
    "precision": ([*TRAIN, "--precision", "x"],
                  "--precision x: expected one of 32-true, bf16-mixed, 16-mixed, bf16-true"),
    "accumulate_grad_batches": ([*TRAIN, "--accumulate-grad-batches", "0"],
                                "--accumulate-grad-batches must be >= 1, got 0"),
    "signal_targets": ([*TRAIN, "--signal-targets", "{t}/nope.json"],
                       "--signal-targets applies to --stage 3, got --stage 2"),
    "resume": ([*TRAIN, "--resume", "{t}/nope.ckpt"], "--resume {t}/nope.ckpt does not exist"),
    "checkpoint_every_n_steps": ([*TRAIN, "--checkpoint-every-steps", "0"],
                                 "--checkpoint-every-steps must be >= 1, got 0"),
    "checkpoint_every_minutes": ([*TRAIN, "--checkpoint-every-minutes", "0"],
                                 "--checkpoint-every-minutes must be a finite number > 0, got 0.0"),
    "num_workers": ([*TRAIN, "--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
    "refs": ([*REFSEG, "--refs", "{t}/nope.p"], "--refs {t}/nope.p does not exist"),
    "instances": ([*REFSEG, "--instances", "{t}/nope.json"],
                  "--instances {t}/nope.json does not exist"),
    "split": ([*REFSEG, "--split", "testC"],
              "--split 'testC' is not in --refs {t}/refs.json (its splits: none)"),
    "template": ([*QA, "--template", "no field"],
                 "--template must contain {question}, got 'no field'"),
    "mask_backend": ([*REFSEG, "--mask-backend", "gpu"],
                     "argument --mask-backend: invalid choice: 'gpu' (choose from 'auto', "
                     "'pycocotools', 'numpy')"),
    "questions": ([*VQA, "--questions", "{t}/nope.json"],
                  "--questions {t}/nope.json does not exist"),
    "annotations": ([*VQA, "--annotations", "{t}/nope.json"],
                    "--annotations {t}/nope.json does not exist"),
    "image_name": ([*VQA, "--image-name", "img_{id}.jpg"],
                   "--image-name: the image name pattern 'img_{id}.jpg' does not format image_id 0 "
                   "(KeyError: 'id')"),
    "base": (["convert-official", "{t}/nope", "-o", "{t}/out"],
             "BASE {t}/nope: no such folder; expected the LLaVA-format base folder (config.json, "
             "weights)"),
    "lora": (["convert-official", "{t}", "--lora", "{t}/nope", "-o", "{t}/out"],
             "--lora {t}/nope: no such folder; expected the LoRA folder "
             "(adapter_config.json, ...)"),
    "planner": (["run", "x", "--planner", "no_such_model", "-o", "{t}/out"],
                "--planner: unknown model 'no_such_model': a local folder starts with ./ or / (or "
                "exists), a hub id is owner/name"),
    "engine": (["run", "x", "--planner", "tiny-llama", "--engine", "llama.cpp", "-o", "{t}/out"],
               "--engine llama.cpp runs a GGUF file (--planner FILE.gguf or smollm2); tiny-llama "
               "is a transformers model"),
    "no_repeat": (["run", "x", "--planner", "tiny-llama", "--no-repeat", "1", "-o", "{t}/out"],
                  "--no-repeat must be 0 (off) or an integer >= 2, got 1"),
    "vision_tower": (["convert-official", "{t}", "--vision-tower", "{t}/nope", "-o", "{t}/out"],
                     "--vision-tower {t}/nope: no such folder; expected the LanguageBind_Image (or "
                     "CLIP) tower folder"),
}  # fmt: skip


@pytest.fixture
def files(tmp_path) -> Path:
    """An image, an empty data file, a JSON list, empty RefCOCO and VQA files, a turn.json."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "data.jsonl").write_text("{}\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "refs.json").write_text("[]")
    (tmp_path / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    (tmp_path / "questions.json").write_text(json.dumps({"questions": []}))
    (tmp_path / "answers.json").write_text(json.dumps({"annotations": []}))
    (tmp_path / "turn.json").write_text("a reply")
    return tmp_path


def test_every_flag_of_the_table_has_a_case():
    assert sorted(CASES) == sorted(FLAGS)


@pytest.mark.parametrize("argument", sorted(CASES))
def test_an_api_argument_error_names_the_flag_typed(argument, files, model_dir, capsys):
    argv, message = CASES[argument]

    def fill(text: str) -> str:
        return text.replace("{t}", str(files)).replace("{m}", str(model_dir))

    before = sorted(files.rglob("*"))
    status = main([fill(arg) for arg in argv])
    err = capsys.readouterr().err
    command = argv[0]
    assert status == 2
    assert err.count("\n") == 1
    head = f"vitron {command}: error: "
    if argument == "mask_backend":  # argparse's own message: the nested parser's prog
        head = "vitron eval refseg: error: "
    expected = head + fill(message)
    if expected.endswith("*"):
        assert err.startswith(expected[:-1])
    else:
        assert err == expected + "\n"
    assert FLAGS[argument].split("/")[-1] in err
    if "_" in argument:  # the API's spelling never reaches the user
        assert f"{argument} " not in err.replace(fill("{t}"), "").replace(fill("{m}"), "")
    assert sorted(files.rglob("*")) == before
