"""The auxiliary-text generator on a tiny random GPT-2 with a tiny word-level tokenizer."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from itaclip.generate import (  # noqa: E402
    AuxTextGenerator,
    SamplingConfig,
    clean_definition,
    clean_synonym,
)

WORDS = "a an the of for to in is word house building people live cat dog sky pet animal one"


@pytest.fixture(scope="module")
def tiny_lm(make_tiny_lm):
    return make_tiny_lm(WORDS)


def test_prompts_follow_the_paper(tiny_lm):
    gen = AuxTextGenerator(*tiny_lm)
    definition = gen.prompt("definition", "cat")
    assert "'cat'" in definition and "50 words" in definition
    assert "house >= a building for people to live in" in definition
    synonym = gen.prompt("synonym", "cat")
    assert "exactly one synonym" in synonym and "closest" in synonym
    with pytest.raises(ValueError, match="kind must be"):
        gen.prompt("story", "cat")


def test_chat_template_is_applied(tiny_lm):
    model, tokenizer = tiny_lm
    tokenizer.chat_template = "{% for m in messages %}<user> {{ m['content'] }}{% endfor %} <bot>"
    try:
        prompt = AuxTextGenerator(model, tokenizer).prompt("synonym", "dog")
    finally:
        tokenizer.chat_template = None
    assert prompt.startswith("<user> Reply with exactly one synonym of the word 'dog'")
    assert prompt.endswith("<bot>")


def test_generation_is_seeded_and_cleaned(tiny_lm):
    gen = AuxTextGenerator(*tiny_lm, SamplingConfig(max_new_tokens=12, seed=3))
    first = gen.generate("synonym", ["cat", "dog"])
    assert first == gen.generate("synonym", ["cat", "dog"])
    assert all(len(s.split()) == 1 and s.strip() for s in first)
    definitions = gen.generate("definition", ["house"])
    assert len(definitions) == 1 and 0 < len(definitions[0].split()) <= 50
    _model, tokenizer = tiny_lm
    answer = gen.answer(gen.prompt("definition", "house"))
    assert len(tokenizer(answer)["input_ids"]) <= 12  # only the new tokens are returned


def test_cleaning_rules():
    assert clean_definition("house", "House >= a building for people.\nmore") == (
        "a building for people."
    )
    assert clean_definition("cat", "  \n") == "cat"
    assert len(clean_definition("x", "w " * 80).split()) == 50
    assert clean_synonym("cat", "  Kitty, or feline") == "kitty"
    assert clean_synonym("cat", "...") == "cat"


def test_aux_cli_writes_texts_that_segment_uses(tiny_lm, tiny_dir, tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from itaclip import Segmenter
    from itaclip.cli import main

    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    aux = tmp_path / "aux.json"
    status = main([
        "aux", "--lm", str(tmp_path / "lm"), "--classes", "cat,dog|puppy", "--kind", "synonym",
        "--max-new-tokens", "6", "-o", str(aux),
    ])  # fmt: skip
    assert status == 0
    data = json.loads(aux.read_text())
    assert data["classes"] == ["cat", "dog"] and data["kind"] == "synonym"
    assert len(data["texts"]) == 2 and all(len(t.split()) == 1 for t in data["texts"])
    pixels = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    common = ["segment", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"),
              "--model", f"local-dir:{tiny_dir}", "--pretrained", "", "--stride", "224",
              "--short-side", "64", "--cache-dir", str(tmp_path / "cache"),
              "--aux-file", str(aux)]  # fmt: skip
    assert main([*common, "--classes", "cat,dog|puppy", "--alpha", "0.5"]) == 0
    seg = Segmenter.from_pretrained(
        f"local-dir:{tiny_dir}", None, preset=None, stride=224, short_side=64, alpha=0.5
    )
    expected = seg(pixels, [["cat"], ["dog", "puppy"]], aux_texts=data["texts"]).labels
    written = np.asarray(Image.open(tmp_path / "out" / "x_labels.png")).astype(np.int64)
    assert (written == expected.numpy()).all()
    capsys.readouterr()
    assert main([*common, "--classes", "cat,sky"]) == 2
    assert capsys.readouterr().err == (
        f"itaclip segment: error: --aux-file {aux} holds auxiliary texts for ['cat', 'dog'], "
        "but --classes names ['cat', 'sky']\n"
    )


def test_aux_cli_writes_the_official_format(tiny_lm, tmp_path):
    import json

    from itaclip import load_aux_texts
    from itaclip.cli import main

    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    args = ["aux", "--lm", str(tmp_path / "lm"), "--classes", "cat,dog|puppy", "--kind",
            "definition", "--max-new-tokens", "8"]  # fmt: skip
    assert main([*args, "-o", str(tmp_path / "aux.json")]) == 0
    assert main([*args, "-o", str(tmp_path / "aux.txt")]) == 0
    texts = json.loads((tmp_path / "aux.json").read_text())["texts"]
    lines = (tmp_path / "aux.txt").read_text().splitlines()
    flat = [" ".join(text.split()) for text in texts]
    assert lines == [f"cat >= {flat[0]}", f"dog >= {flat[1]}"]
    assert load_aux_texts(tmp_path / "aux.txt", ["cat", "dog,puppy"]) == flat
