"""The C++ CPU kernels (``_cpu_kernels.cpp``: the attention; ``_cpu_rows.cpp``: the top-k
membership, ``add_layer_norm_`` and ``bias_gelu_``; ``_cpu_vec.h``: the vector maths both use),
compiled on first use for the machine they run on.

Eager PyTorch spends most of a windowed KNN attention's time on the CPU outside arithmetic: a
``topk`` that sorts every row of 64 similarities, and a fused SDPA whose 16-wide heads and
(B, heads, N, N) mask keep it far from the matmul rate. The kernels do the first with no sort and
the second in one pass per (window, head), with torch's own vector type (``at::vec``), parallel
over torch's threads.

Why compiled here and not shipped in the wheel: the packages are pure Python, and ``-march=native``
needs the user's CPU. ``torch.utils.cpp_extension`` builds it once (about 10 s), in a private
temporary folder, and the library is then moved atomically into the cache
(``$TORCH_EXTENSIONS_DIR/common_kernels/``, default ``~/.cache/torch_extensions``) under a name
that digests the sources, this torch, the CPU and its vector width; later processes load that
file in milliseconds, with no compiler. No lock is shared between processes, so one killed in
the middle of a build leaves nothing that makes the next wait (two concurrent builds each write
a complete library; the last rename wins). A build needs a C++ compiler and ninja, as
``torch.compile`` on the CPU does. Without them (or with ``COMMON_KERNELS_CPU_KERNELS=0``)
:func:`status` says why and the callers keep their PyTorch paths.

Inside ``torch.compile`` the top-k and attention ops are extern calls of the compiled graph:
each has a fake (shape-only) implementation, registered when the library loads, and inductor
fuses the elementwise work around them (``add_layer_norm_``, in place, is left to inductor,
which fuses the add and the norm itself).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import tempfile
import threading
from pathlib import Path

import torch

SOURCES = tuple(Path(__file__).with_name(name) for name in ("_cpu_kernels.cpp", "_cpu_rows.cpp"))
HEADERS = (Path(__file__).with_name("_cpu_vec.h"),)  # included by both: digested too
DISABLE_ENV = "COMMON_KERNELS_CPU_KERNELS"
# at::vec's width follows torch's own CPU capability (what its kernels were dispatched to).
_CAPABILITY_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
}

_log = logging.getLogger("common_kernels")
_lock = threading.Lock()
_state: dict[str, object] = {}  # "ops" once loaded, "reason" once refused


def _cpu_name() -> str:
    """The CPU's model name (``-march=native`` code is only valid on the CPU it was built on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_name(capability: str) -> str:
    """The cache entry's name: a digest of the sources, torch, the CPU and the vector width."""
    digest = hashlib.sha256()
    sources = [path.read_bytes() for path in (*SOURCES, *HEADERS)]
    for part in (*sources, torch.__version__.encode(), _cpu_name().encode(), capability.encode()):
        digest.update(part)
    return f"common_kernels_cpu_{digest.hexdigest()[:16]}"


def _cpp_extension():
    """``torch.utils.cpp_extension``, imported without its CUDA_HOME warning (a CPU build)."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)  # its import warns "No CUDA runtime is found" on CPU machines
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def cache_folder() -> Path:
    """Where built libraries are kept: ``$TORCH_EXTENSIONS_DIR/common_kernels`` (default
    ``~/.cache/torch_extensions/common_kernels``)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / "common_kernels"


def _why_not_buildable() -> str | None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} is not on PATH; install g++ or clang, or set CXX)"
    if not _cpp_extension().is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def _load() -> None:
    if os.environ.get(DISABLE_ENV) == "0":
        _state["reason"] = f"{DISABLE_ENV}=0 turns them off"
        return
    capability = torch.backends.cpu.get_cpu_capability()
    name = _build_name(capability)
    library = cache_folder() / f"{name}.so"
    if library.is_file():
        try:
            torch.ops.load_library(str(library))
        except (RuntimeError, OSError) as error:
            _state["reason"] = f"{library} does not load: {_first_line(error)}"
            return
    else:  # the build loads what it built
        reason = _why_not_buildable() or _build(name, capability, library)
        if reason is not None:
            _state["reason"] = reason
            return
    _register_fakes()
    _state["ops"] = torch.ops.common_kernels_cpu


def _register_fakes() -> None:
    """The ops' output shapes, strides and dtypes without running them: what ``torch.compile``
    traces the ops with (once per process: the library loads once)."""
    lib = "common_kernels_cpu"

    @torch.library.register_fake(f"{lib}::topk_membership")
    def _(sim, k):
        return torch.empty_like(sim, dtype=torch.bool)

    @torch.library.register_fake(f"{lib}::masked_attention")
    def _(q, k, v, mask, bias, scale, head_scale):
        return _attention_output(q)

    @torch.library.register_fake(f"{lib}::masked_attention_lse")
    def _(q, k, v, mask, bias, scale, head_scale):
        return _attention_output(q), q.new_empty(q.shape[:3])  # lse: (B, H, N)

    @torch.library.register_fake(f"{lib}::masked_attention_backward")
    def _(grad_out, q, k, v, mask, bias, out, lse, scale, head_scale, bias_grad, scale_grad):
        batch, heads, n, d = q.shape
        dqkv = q.new_empty(batch, n, 3, heads, d)
        dbias = bias.new_empty(bias.shape) if bias_grad else q.new_empty(0)
        dscale = head_scale.new_empty(head_scale.shape) if scale_grad else q.new_empty(0)
        return dqkv, dbias, dscale


def _attention_output(q: torch.Tensor) -> torch.Tensor:
    """The C++ attention's output: (B, H, N, D) laid out as (B, N, H, D)."""
    batch, heads, n, d = q.shape
    return q.new_empty(batch, n, heads, d).permute(0, 2, 1, 3)  # (B, H, N, D)


def _build(name: str, capability: str, library: Path) -> str | None:
    """Compile the library in a private folder, load it, and move it to ``library`` for later
    processes; None, or why not."""
    flags = ["-O3", "-march=native", "-fopenmp", *_CAPABILITY_FLAGS.get(capability, [])]
    _log.info("compiling common-kernels' C++ CPU kernels %s (once per machine)", name)
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=library.parent) as folder:
            _cpp_extension().load(
                name=name, sources=[str(source) for source in SOURCES], extra_cflags=flags,
                extra_ldflags=["-fopenmp"], build_directory=folder, is_python_module=False,
                verbose=False,
            )  # fmt: skip
            partial = library.with_name(f"{library.name}.{os.getpid()}.partial")
            shutil.copyfile(Path(folder) / f"{name}.so", partial)
            os.replace(partial, library)  # complete or absent, never half-written
    except (RuntimeError, OSError, ImportError) as error:
        return f"their build failed: {_first_line(error)}"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def status() -> tuple[bool, str]:
    """Whether the C++ CPU kernels can run (building them on the first call), and if not, why.

    Public as ``common_kernels.cpu_kernels_status``. Call it before ``torch.compile`` traces a
    model that runs on the CPU: the compiled graph then calls the loaded kernels (a first load
    inside the trace is a graph break).
    """
    if "ops" in _state:  # no lock once loaded: torch.compile traces this read
        return True, ""
    if torch.compiler.is_compiling():  # a graph break, not a trace of the build (wrapped here:
        return torch.compiler.disable(_load_once)()  # the decorator would import dynamo)
    return _load_once()


def _load_once() -> tuple[bool, str]:
    with _lock:
        if not _state:
            _load()
    if "ops" in _state:
        return True, ""
    return False, f"the C++ CPU kernels are unavailable: {_state['reason']}"


def ops():
    """``torch.ops.common_kernels_cpu`` (call :func:`status` first: this assumes it said yes)."""
    return _state["ops"]
