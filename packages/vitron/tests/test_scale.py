# ruff: noqa: E501
"""Scale: loading without a random copy (meta device, assign, dtype), and training options
(accumulation, gradient checkpointing, precision, strategies) on the CPU with tiny models."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from vitron.cli import main
from vitron.invocations import parse_invocation
from vitron.models import RegionConfig, SignalConfig, VitronModel
from vitron.models.loading import empty_weights
from vitron.processing import Message
from vitron.tiny import byte_level_tokenizer, tiny_config, tiny_model
from vitron.training import configure_stage, enable_gradient_checkpointing, train
from vitron.training.config import check_scale_options
from vitron.training.module import (
    VitronLightningModule,
    assign_state_dict,
    lightning_strategy,
    save_trained,
)

RANDOM_FILLS = {"uniform_", "normal_", "bernoulli_", "random_", "exponential_", "cauchy_",
                "log_normal_", "geometric_", "randn", "rand", "randint", "randperm", "normal"}  # fmt: skip


class RandomFills(TorchDispatchMode):
    """Records (op, shape) of every random fill of a tensor with real storage (not meta)."""

    def __init__(self) -> None:
        super().__init__()
        self.fills: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        target = out if isinstance(out, torch.Tensor) else args[0]
        if name in RANDOM_FILLS and target.device.type != "meta":
            self.fills.append((name, tuple(target.shape)))
        return out

    @property
    def elements(self) -> int:
        return sum(int(np.prod(shape)) for _, shape in self.fills)


def conversation() -> list[Message]:
    calls = {
        "version": 1,
        "calls": [
            {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}}
        ],
    }
    return [
        Message("user", "<image>\nFind the dog."),
        Message("assistant", "On it.", parse_invocation(calls)),
    ]


@pytest.fixture
def saved(tmp_path):
    model = tiny_model(seed=3)
    model.save_pretrained(tmp_path / "m")
    return model, tmp_path / "m"


# ----------------------------------------------------------------------------- loading


def test_from_pretrained_never_initialises_the_weights_at_random(saved, monkeypatch):
    model, folder = saved
    at_load: list[set[str]] = []
    original = nn.Module.load_state_dict

    def spy(self, state, strict=True, assign=False):
        at_load.append({p.device.type for p in self.parameters()})
        return original(self, state, strict=strict, assign=assign)

    monkeypatch.setattr(nn.Module, "load_state_dict", spy)
    with RandomFills() as plain:
        VitronModel(model.config, model.tokenizer)  # the old way: everything at random first
    with RandomFills() as loading:
        loaded = VitronModel.from_pretrained(folder)
    count = sum(p.numel() for p in model.parameters())
    assert plain.elements >= count  # the instrument sees a random initialisation
    # only CLIP's class embedding (torch.randn before it is registered and moved to meta)
    assert loading.fills == [("randn", (32,))] and loading.elements < 0.01 * count
    assert at_load == [{"meta"}]  # every parameter was still storage-less when the file was read
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}


@pytest.mark.parametrize("backend", ["transformers", "open_clip"])
def test_from_pretrained_in_bfloat16_equals_the_saved_weights_cast(tmp_path, image, backend):
    model = tiny_model(seed=3, vision_backend=backend)
    model.save_pretrained(tmp_path / "m")
    loaded = VitronModel.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    saved = load_file(tmp_path / "m" / "model.safetensors")
    state = loaded.state_dict()
    assert set(saved) <= set(state)
    for name, tensor in saved.items():
        assert state[name].dtype == torch.bfloat16, name
        assert torch.equal(state[name], tensor.to(torch.bfloat16)), name
    assert {p.dtype for p in loaded.parameters()} == {
        torch.bfloat16
    } and loaded.dtype == torch.bfloat16
    if backend == "transformers":  # rotary frequencies stay float32 as transformers builds them
        assert loaded.llm.model.rotary_emb.inv_freq.dtype == torch.float32
    sample = model.processor.sample(conversation(), [image])
    with torch.no_grad():
        reference = model([sample]).logits
        again = VitronModel.from_pretrained(tmp_path / "m")([sample]).logits
        half = loaded([sample]).logits
    assert torch.equal(again, reference)  # float32 round trip: identical outputs
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference, atol=0.05, rtol=0.05)


def test_tied_embeddings_are_saved_once_and_tied_again(tmp_path):
    tokenizer = byte_level_tokenizer()
    base = tiny_config()
    tokenizer.add_special_tokens({"additional_special_tokens": list(base.special_tokens)})
    config = tiny_config(vocab_size=len(tokenizer))
    config.llm["tie_word_embeddings"] = True
    torch.manual_seed(0)
    model = VitronModel(config, tokenizer)
    assert model.llm.lm_head.weight is model.llm.get_input_embeddings().weight
    model.save_pretrained(tmp_path / "m")
    names = {"llm.lm_head.weight", "llm.model.embed_tokens.weight"}
    assert len(names & set(load_file(tmp_path / "m" / "model.safetensors"))) == 1  # saved once
    loaded = VitronModel.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert loaded.llm.lm_head.weight is loaded.llm.get_input_embeddings().weight
    assert torch.equal(loaded.llm.lm_head.weight, model.llm.lm_head.weight.detach().bfloat16())


def test_weights_of_another_model_are_refused(saved, tmp_path):
    _, folder = saved
    weights = load_file(folder / "model.safetensors")
    save_file({**weights, "extra.weight": torch.zeros(2)}, folder / "model.safetensors")
    with pytest.raises(
        ValueError,
        match=r"holds 1 tensor\(s\) this model does not have, e\.g\. \['extra\.weight'\]",
    ):
        VitronModel.from_pretrained(folder)
    del weights["projector.fc1.weight"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors lacks 1 weight\(s\), e\.g\. \['projector\.fc1\.weight'\]",
    ):
        VitronModel.from_pretrained(folder)
    weights["projector.fc1.weight"] = torch.zeros(3, 3)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"projector\.fc1\.weight has shape \(3, 3\), the model's is \(32, 32\)"
    ):
        VitronModel.from_pretrained(folder)


def test_empty_weights_puts_parameters_on_meta_and_keeps_buffers():
    with empty_weights():
        layer = nn.Linear(4, 3)
        norm = nn.BatchNorm1d(3)
    assert layer.weight.is_meta and layer.bias.is_meta and isinstance(layer.weight, nn.Parameter)
    assert norm.running_mean.device.type == "cpu" and torch.equal(norm.running_var, torch.ones(3))
    assert not nn.Linear(2, 2).weight.is_meta  # the patch ends with the block


def test_from_components_loads_pretrained_parts_in_dtype_without_a_random_copy(tmp_path, image):
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

    tokenizer = byte_level_tokenizer()
    config = tiny_config(vocab_size=len(tokenizer))
    # distinct widths: LLM 24 / 40, CLIP 20 / 36, so that each weight shape tells its part
    llm = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(**{**config.llm, "hidden_size": 24, "intermediate_size": 40})
    )
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    clip = CLIPVisionModel(
        CLIPVisionConfig(
            **{**config.vision.model_config, "hidden_size": 20, "intermediate_size": 36}
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    signal = SignalConfig(tasks=("segment_image", "generate_image"), specific_dim=6, invariant_dim=10,
                          output_dims={"segment_image": 16, "generate_image": 16}, discriminator_hidden=12)  # fmt: skip
    with RandomFills() as fills:
        model = VitronModel.from_components(
            str(tmp_path / "llm"), str(tmp_path / "clip"), dtype=torch.bfloat16, device_map="cpu",
            projector_hidden=48, region=RegionConfig(hidden=28, location_frequencies=4), signal=signal,
        )  # fmt: skip
    new_parts = (model.projector, model.region_encoder, model.signal_heads, model.synergy)
    allowed = {tuple(p.shape) for part in new_parts for p in part.parameters()} | {(264, 24)}
    pretrained = {
        tuple(p.shape) for p in (*llm.model.layers.parameters(), *clip.encoder.parameters())
    }
    filled = {shape for _, shape in fills.fills}
    assert filled <= allowed  # the new parts and the 4 new token rows' resize: nothing else
    assert not filled & (pretrained - allowed)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    for name, param in llm.model.layers.named_parameters():
        assert torch.equal(model.llm.model.layers.get_parameter(name), param.detach().bfloat16()), (
            name
        )
    for name, param in clip.named_parameters():
        assert torch.equal(model.vision.model.get_parameter(name), param.detach().bfloat16()), name
    with torch.no_grad():
        assert torch.isfinite(model([model.processor.sample(conversation(), [image])]).loss)


# ----------------------------------------------------------------------------- training


def caption(text: str, image: str) -> str:
    return json.dumps(
        {
            "images": [image],
            "conversations": [
                {"from": "human", "value": "<image>"},
                {"from": "gpt", "value": text},
            ],
        }
    )


@pytest.fixture
def captions(tmp_path, write_noise_images):
    """Two captions with equal token counts over different images."""
    write_noise_images(tmp_path, ["0.png", "1.png"], 24, 24)
    path = tmp_path / "captions.jsonl"
    path.write_text(
        caption("a noisy square", "0.png") + "\n" + caption("a dusty circle", "1.png") + "\n"
    )
    return path


class StepRecorder(L.Callback):
    """Gradients at each optimizer step, the number of steps and of batches."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []
        self.batches = 0
        self.strategy = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.strategy = trainer.strategy

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        named = pl_module.model.named_parameters()
        self.grads.append({n: p.grad.detach().clone() for n, p in named if p.grad is not None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1


def run(data, out, **options) -> StepRecorder:
    recorder = StepRecorder()
    defaults = {"stage": 2, "max_steps": 1, "lr": 1e-3, "checkpoints": False, "accelerator": "cpu",
                "enable_progress_bar": False, "callbacks": [recorder]}  # fmt: skip
    train(tiny_model(seed=0), data, out, **{**defaults, **options})
    return recorder


def test_accumulating_two_batches_of_one_equals_one_batch_of_two(captions, tmp_path):
    whole = run(captions, tmp_path / "a", batch_size=2)
    accumulated = run(captions, tmp_path / "b", batch_size=1, accumulate_grad_batches=2)
    assert (len(whole.grads), whole.batches) == (1, 1)
    assert (len(accumulated.grads), accumulated.batches) == (1, 2)
    (a,), (b,) = whole.grads, accumulated.grads
    assert sorted(a) == sorted(b) and any(n.startswith("llm.") for n in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)
    two_steps = run(captions, tmp_path / "c", batch_size=1, accumulate_grad_batches=2, max_steps=2)
    assert (len(two_steps.grads), two_steps.batches) == (2, 4)


def stage3_samples(model, image):
    calls = {"version": 1, "calls": [
        {"id": "seg", "task": "segment_image", "args": {"image": "$image0", "text": "dog"}},
        {"id": "gen", "task": "generate_image", "args": {"text": "a cat"}}]}  # fmt: skip
    messages = [
        Message("user", "<image>\nFind the dog, draw a cat."),
        Message("assistant", "On it.", parse_invocation(calls)),
    ]
    targets = [torch.randn(16, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    return [model.processor.sample(messages, [image], signal_targets=targets)] * 2


def loss_and_grads(image, checkpointing: bool):
    model = tiny_model(seed=0)
    configure_stage(model, 2)
    model.train()
    used = enable_gradient_checkpointing(model) if checkpointing else None
    calls = []
    model.llm.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))
    out = model(stage3_samples(model, image), align_weight=1.0, synergy_weight=0.1)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    with torch.no_grad():
        model(stage3_samples(model, image))
    return out.loss.detach(), grads, len(calls), used


@pytest.mark.parametrize("path", ["transformers", "blocks"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(image, path, monkeypatch):
    loss, grads, calls, _ = loss_and_grads(image, checkpointing=False)
    if path == "blocks":
        # an LLM without transformers' checkpointing: torch.utils.checkpoint around each block
        from transformers import LlamaForCausalLM

        monkeypatch.setattr(LlamaForCausalLM, "supports_gradient_checkpointing", False)
    loss_ckpt, grads_ckpt, calls_ckpt, used = loss_and_grads(image, checkpointing=True)
    assert used == path
    # forward + recomputation in backward, then one evaluation forward without recomputation
    assert (calls, calls_ckpt) == (2, 3)
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-6)
    assert sorted(grads_ckpt) == sorted(grads) and any(
        n.startswith("llm.model.layers") for n in grads
    )
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_through_train(captions, tmp_path):
    plain = run(captions, tmp_path / "a", batch_size=2)
    checkpointed = run(captions, tmp_path / "b", batch_size=2, gradient_checkpointing=True)
    (a,), (b,) = plain.grads, checkpointed.grads
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_mixed_runs_a_step_on_the_cpu_with_float32_weights(captions, tmp_path):
    model = tiny_model(seed=0)
    before = model.projector.fc1.weight.detach().clone()
    dtypes = []
    model.llm.lm_head.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    result = train(
        model, captions, tmp_path / "out", stage=2, max_steps=1, batch_size=2, lr=1e-3,
        precision="bf16-mixed", checkpoints=False, accelerator="cpu", enable_progress_bar=False,
    )  # fmt: skip
    assert dtypes == [torch.bfloat16]  # the LLM ran under bf16 autocast
    assert model.projector.fc1.weight.dtype == torch.float32  # over float32 master weights
    assert not torch.equal(model.projector.fc1.weight.detach(), before)
    assert np.isfinite(result["first_loss"])


def test_ddp_allows_the_parts_a_batch_leaves_unused(captions, tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    recorder = run(captions, tmp_path / "out", batch_size=1, strategy="ddp", devices=1)
    assert isinstance(recorder.strategy, DDPStrategy)
    assert recorder.strategy._ddp_kwargs["find_unused_parameters"] is True
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strategy": "dpp"}, r"^strategy dpp: expected one of auto, ddp, .*"),
        (
            {"strategy": "deepspeed_stage_2"},
            r"^strategy deepspeed_stage_2 needs deepspeed, which is not installed \(pip install deepspeed\)",
        ),
        (
            {"strategy": "deepspeed_stage_3_offload"},
            r"^strategy deepspeed_stage_3_offload needs deepspeed, which is not installed \(pip install deepspeed\)",
        ),
        (
            {"precision": "8-true"},
            r"^precision 8-true: expected one of 32-true, bf16-mixed, 16-mixed, bf16-true$",
        ),
        ({"accumulate_grad_batches": 0}, r"accumulate_grad_batches must be >= 1, got 0"),
    ],
)
def test_scale_option_errors(options, message, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepspeed" else real(name, *a),
    )
    settings = {"strategy": "auto", "precision": "32-true", "accumulate_grad_batches": 1, **options}
    with pytest.raises(ValueError, match=message):
        check_scale_options(**settings)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--strategy", "deepspeed_stage_2"],
            "--strategy deepspeed_stage_2 needs deepspeed, which is not installed (pip install deepspeed)",
        ),
        (["--strategy", "dpp"], "--strategy dpp: expected one of auto, ddp, "),
        (["--strategy", "deepspeed_stage_3"], "--strategy deepspeed_stage_3 needs deepspeed"),
        (
            ["--precision", "16"],
            "--precision 16: expected one of 32-true, bf16-mixed, 16-mixed, bf16-true",
        ),
        (
            ["--devices", "0"],
            "--devices must be auto, a count >= 1 (-1: all), or distinct indices 0,1,...; got 0",
        ),
        (
            ["--devices", "0,0"],
            "--devices must be auto, a count >= 1 (-1: all), or distinct indices 0,1,...; got 0,0",
        ),
        (["--accumulate-grad-batches", "0"], "--accumulate-grad-batches must be >= 1, got 0"),
        (["--signal-targets", "t.json"], "--signal-targets applies to --stage 3, got --stage 1"),
    ],
)
def test_train_command_rejects_bad_scale_options(
    captions, saved, tmp_path, capsys, monkeypatch, flags, message
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepspeed" else real(name, *a),
    )
    _, folder = saved
    out = tmp_path / "trained"
    status = main(
        [
            "train",
            "--model",
            str(folder),
            "--data",
            str(captions),
            "--stage",
            "1",
            "-o",
            str(out),
            *flags,
        ]
    )
    assert status == 2
    assert capsys.readouterr().err.strip().startswith(f"vitron train: error: {message}")
    assert not out.exists()


def test_train_command_takes_the_scale_options(captions, saved, tmp_path, capsys):
    _, folder = saved
    status = main([
        "train", "--model", str(folder), "--data", str(captions), "--stage", "2", "-o", str(tmp_path / "t"),
        "--max-steps", "2", "--batch-size", "1", "--accumulate-grad-batches", "2", "--precision", "bf16-true",
        "--gradient-checkpointing", "--devices", "1", "--strategy", "auto", "--accelerator", "cpu",
    ])  # fmt: skip
    assert status == 0 and "stage 2: loss" in capsys.readouterr().out
    weights = load_file(tmp_path / "t" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}  # bf16-true trains bf16 weights


# ----------------------------------------------------------------------------- sharded strategies


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp_cpu_offload", "deepspeed_stage_3"])
def test_sharded_strategies_pass_the_option_checks(strategy, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "deepspeed" else real(name, *a),
    )
    assert check_scale_options(strategy, "bf16-mixed", 1) is None


@pytest.mark.parametrize(
    ("strategy", "lora_rank"), [("fsdp", 0), ("fsdp_cpu_offload", 0), ("fsdp", 2)]
)
def test_fsdp_strategy_wraps_the_decoder_layers_and_saves_full_state_dicts(strategy, lora_rank):
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = tiny_model(seed=0)
    configure_stage(model, 2, lora_rank)
    built = lightning_strategy(strategy, model)
    assert type(built) is FSDPStrategy
    assert built._state_dict_type == "full"
    assert built.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert built.kwargs["use_orig_params"] is True  # frozen and trainable weights share units
    assert built.cpu_offload.offload_params is (strategy == "fsdp_cpu_offload")


def gathering_fsdp(state: dict[str, torch.Tensor], rank: int):
    """An FSDP strategy whose gathered full state dict is ``state`` (no process group)."""
    from lightning.pytorch.strategies import FSDPStrategy

    class GatheringFSDP(FSDPStrategy):
        @property
        def is_global_zero(self) -> bool:
            return rank == 0

        def lightning_module_state_dict(self) -> dict[str, torch.Tensor]:
            return state if rank == 0 else {}

    return GatheringFSDP(state_dict_type="full")


def trained_module(lora_rank: int) -> VitronLightningModule:
    """A stage-2 module whose weights (LoRA adapters included) are not the initial ones."""
    module = VitronLightningModule(tiny_model(seed=0), stage=2, lora_rank=lora_rank)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return module


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_a_gathered_state_dict_is_saved_as_the_unsharded_folder(lora_rank, tmp_path):
    module = trained_module(lora_rank)
    state = {name: t.detach().clone() for name, t in module.state_dict().items()}
    assert any("lora_B" in name for name in state) is bool(lora_rank)
    save_trained(gathering_fsdp(state, rank=1), module, tmp_path / "rank1")
    assert not (tmp_path / "rank1").exists()  # only rank 0 writes
    save_trained(gathering_fsdp(state, rank=0), module, tmp_path / "sharded")
    module.export(tmp_path / "whole")  # the unsharded path (merges LoRA in place)
    files = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").rglob("*"))
    assert (
        sorted(p.relative_to(tmp_path / "sharded") for p in (tmp_path / "sharded").rglob("*"))
        == files
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert json.loads((tmp_path / "sharded" / "config.json").read_text()) == config
    assert "random_weights" not in config  # trained from a tiny (random) model: not random now
    loaded = VitronModel.from_pretrained(str(tmp_path / "sharded")).state_dict()
    source = module.model.state_dict()
    assert sorted(loaded) == sorted(source) and not any("lora" in name for name in loaded)
    for name, tensor in source.items():
        assert torch.equal(loaded[name], tensor), name


def test_a_state_dict_missing_a_weight_or_with_an_unknown_one_is_refused():
    model = tiny_model(seed=0)
    state = dict(model.state_dict())
    del state["projector.fc1.weight"]
    with pytest.raises(ValueError, match=r"^the state dict lacks projector\.fc1\.weight$"):
        assign_state_dict(model, state)
    with pytest.raises(
        ValueError, match=r"^the state dict has 1 unknown tensor\(s\), e\.g\. \['extra'\]$"
    ):
        assign_state_dict(model, {**model.state_dict(), "extra": torch.zeros(1)})


@pytest.mark.gpu
def test_fsdp_trains_on_one_gpu_and_saves_one_folder(captions, saved, tmp_path, capsys):
    initial, folder = saved
    out = tmp_path / "fsdp"
    status = main([
        "train", "--model", str(folder), "--data", str(captions), "--stage", "2", "-o", str(out),
        "--max-steps", "2", "--batch-size", "1", "--lr", "1e-3", "--strategy", "fsdp",
        "--accelerator", "gpu", "--devices", "1",
    ])  # fmt: skip
    assert status == 0 and "stage 2: loss" in capsys.readouterr().out
    trained = VitronModel.from_pretrained(str(out)).state_dict()
    before = initial.state_dict()
    assert sorted(trained) == sorted(before)
    changed = [name for name in before if not torch.equal(trained[name], before[name])]
    assert any(name.startswith("projector.") for name in changed)
    assert any(name.startswith("llm.model.layers.") for name in changed)  # inside FSDP units
    assert not any(name.startswith("vision.") for name in changed)  # frozen
