"""``max_new_tokens`` and ``max_rounds`` are bounded by the positions the model holds (issue 49,
item 2): refused before any weights load, naming the argument (API) or the flag (CLI) with the
estimate and the limit; a reply stops where the conversation fills ``max_length``, and shows
its tokens' progress."""

from __future__ import annotations

import pytest

from common_kernels.runtime.errors import InvalidArgument
from common_kernels.runtime.progress import reporting_to
from vitron import Assistant
from vitron.cli import FLAGS, main
from vitron.models import VitronModel
from vitron.options import AssistantOptions, open_assistant
from vitron.processing import Message, reply_budget
from vitron.specialists import SpecialistRegistry
from vitron.tiny import tiny_model

TINY_PROMPT = 418  # positions of the tiny model's shortest prompt (system prompt, bytes)
TINY_ROUND = 28  # " ASSISTANT: </s>USER: Results:  " in the tiny byte-level tokenizer


@pytest.fixture
def no_weights(monkeypatch):
    """Loading the weights fails the test: the bound is checked from the config first."""

    def fail(*args, **kwargs):
        pytest.fail("the weights were loaded before max_new_tokens / max_rounds were checked")

    monkeypatch.setattr(VitronModel, "from_pretrained", fail)


def expected(argument: str, value: int, holder: str) -> str:
    """The message for the tiny model (max_length 4096), ``argument`` spelt as given."""
    if argument.endswith("tokens"):
        return (
            f"{argument} {value}: a reply of {value} tokens after the shortest prompt "
            f"({TINY_PROMPT} positions) needs {value + TINY_PROMPT} positions, more than the "
            f"4096 positions {holder} holds (its max_length); at most {4096 - TINY_PROMPT}"
        )
    return (
        f"{argument} {value}: {value} rounds of calls after the shortest prompt ({TINY_PROMPT} "
        f"positions) need at least {TINY_PROMPT + value * TINY_ROUND} positions ({TINY_ROUND} "
        f"per round), more than the 4096 positions {holder} holds (its max_length); at most "
        f"{(4096 - TINY_PROMPT) // TINY_ROUND}"
    )


def test_the_budget_is_the_shortest_prompt_the_model_sees():
    model = tiny_model()
    budget = reply_budget(model.tokenizer, model.config)
    sample = model.processor.sample(
        [Message("user", "")], add_generation_prompt=True, with_labels=False
    )
    assert (budget.max_length, budget.prompt, budget.round) == (4096, TINY_PROMPT, TINY_ROUND)
    assert budget.prompt == sample.input_ids.numel()
    assert budget.reply == 4096 - TINY_PROMPT


@pytest.mark.parametrize(
    ("argument", "value"),
    [("max_new_tokens", 100_000_000), ("max_new_tokens", 4096 - TINY_PROMPT + 1),
     ("max_rounds", 1000), ("max_rounds", (4096 - TINY_PROMPT) // TINY_ROUND + 1)],
)  # fmt: skip
def test_open_assistant_refuses_more_than_the_model_holds_before_loading(
    argument, value, model_dir, tmp_path, no_weights
):
    options = AssistantOptions(str(model_dir), tmp_path / "out", **{argument: value})
    with pytest.raises(InvalidArgument) as caught:
        open_assistant(options)
    assert caught.value.argument == argument
    assert str(caught.value) == expected(argument, value, str(model_dir))
    assert caught.value.for_flags(FLAGS) == expected(FLAGS[argument], value, str(model_dir))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argument", "value"), [("max_new_tokens", 10**8), ("max_rounds", 10**3)])
def test_the_assistant_refuses_more_than_its_model_holds(argument, value, tmp_path):
    with pytest.raises(InvalidArgument) as caught:
        Assistant(tiny_model(), SpecialistRegistry(), tmp_path, **{argument: value})
    assert str(caught.value) == expected(argument, value, "the model")


def test_the_limits_themselves_are_accepted(tmp_path):
    most = {"max_new_tokens": 4096 - TINY_PROMPT, "max_rounds": (4096 - TINY_PROMPT) // TINY_ROUND}
    assistant = Assistant(tiny_model(), SpecialistRegistry(), tmp_path, **most)
    assert (assistant.generation["max_new_tokens"], assistant.max_rounds) == tuple(most.values())


@pytest.mark.parametrize(
    ("flag", "value"), [("--max-new-tokens", 100_000_000), ("--max-rounds", 1000)]
)
def test_vitron_run_refuses_more_than_the_model_holds_in_one_line(
    flag, value, model_dir, tmp_path, capsys, no_weights
):
    argv = ["run", "hi", "--model", str(model_dir), "-o", str(tmp_path / "out"), flag, str(value)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"vitron run: error: {expected(flag, value, str(model_dir))}\n"
    assert list(tmp_path.iterdir()) == []  # nothing generated, no output folder


def test_a_reply_stops_where_the_conversation_fills_max_length(monkeypatch):
    model = tiny_model()
    model.config.max_length = 600  # 182 positions after the shortest prompt
    sample = model.processor.sample(
        [Message("user", "hi")], add_generation_prompt=True, with_labels=False
    )
    asked = {}
    generate = model.llm.generate

    def spy(**kwargs):
        asked["max_new_tokens"] = kwargs["max_new_tokens"]
        return generate(**kwargs)

    monkeypatch.setattr(model.llm, "generate", spy)
    told = []
    with reporting_to(lambda *progress: told.append(progress)):
        ids = model.generate(sample, max_new_tokens=1000, progress=True)
    left = 600 - sample.input_ids.numel()
    assert asked["max_new_tokens"] == left
    assert 1 <= ids.numel() <= left
    # the progress counts the tokens generated: started at 0, one step per token
    assert told[0] == ("vitron reply", 0, left, "tokens")
    assert told[-1] == ("vitron reply", ids.numel(), left, "tokens")


def test_a_conversation_that_fills_max_length_is_refused_before_generating():
    model = tiny_model()
    sample = model.processor.sample(
        [Message("user", "hi")], add_generation_prompt=True, with_labels=False
    )
    model.config.max_length = sample.input_ids.numel()
    with pytest.raises(ValueError) as caught:
        model.generate(sample)
    assert str(caught.value) == (
        f"the conversation is {model.config.max_length} positions long (text + media), the "
        f"model's max_length {model.config.max_length}: no position is left for a reply; "
        "start a new conversation"
    )
