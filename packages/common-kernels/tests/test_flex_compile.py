"""FlexAttention compiles once per variant and stays compiled (dynamo's compile counters).

On CUDA the ``flex`` backend runs ``torch.compile``d code. Dynamo's guards decide when it
recompiles, and they are the same on the CPU, so these tests run the compiled path on the CPU
with dynamo's ``CompileCounterWithBackend("eager")`` as the backend: it counts every frame
dynamo compiles and then runs the traced graph eagerly (FlexAttention's CPU forward). A new
dictionary, K, batch size, bias table or scale value must not compile again; a new head count
(a static shape) or the first call in the other grad mode compiles once; past the recompile
limit the call fails with dynamo's error instead of falling back to the unfused path.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from common_kernels import KNNDictionary, _flex, knn_graph
from common_kernels.attention import _reference

if _flex.FLEX_IMPORT_ERROR is not None:
    pytest.skip(_flex.FLEX_IMPORT_ERROR, allow_module_level=True)


@pytest.fixture
def counter(monkeypatch):
    """Dynamo reset, the compiled functions rebuilt with a counting backend."""
    torch._dynamo.reset()
    counting = CompileCounterWithBackend("eager")
    monkeypatch.setattr(_flex, "COMPILE_BACKEND", counting)
    _flex._compiled.cache_clear()
    yield counting
    _flex._compiled.cache_clear()
    torch._dynamo.reset()


def problem(batch, heads, n=64, d=16, k=16, bias="H", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, 8, generator=g)
    dictionary = KNNDictionary.from_unique(knn_graph(x, k))
    q, k_, v = (torch.randn(batch, heads, n, d, generator=g) for _ in range(3))
    table = {"H": (1, heads), "B1": (batch, 1), None: None}[bias]
    bias = None if table is None else torch.randn(*table, n, n, generator=g)
    return q, k_, v, dictionary, bias


def compiled_call(q, k, v, dictionary, bias, scale=0.25):
    out = _flex.flex_knn_attention(q, k, v, dictionary, scale, bias, compiled=True)
    expected = _reference(q, k, v, dictionary, scale, bias)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)
    return out


def test_new_dictionaries_batch_sizes_and_bias_tables_reuse_one_compilation(counter) -> None:
    with torch.no_grad():
        compiled_call(*problem(4, 2))
        assert counter.frame_count == 1
        for batch, k, seed in ((8, 16, 1), (3, 24, 2), (17, 9, 3), (4, 16, 4)):
            compiled_call(*problem(batch, 2, k=k, seed=seed))  # new lists, sizes, tables
        compiled_call(*problem(5, 2, seed=5), scale=0.25)
        assert counter.frame_count == 1


def test_static_variants_compile_once_each(counter) -> None:
    with torch.no_grad():
        compiled_call(*problem(4, 2))
        compiled_call(*problem(4, 4))  # other head count: a second variant
        compiled_call(*problem(6, 4, seed=1))
        compiled_call(*problem(6, 4, bias=None))  # no bias: a third
        compiled_call(*problem(6, 4, bias="B1"))  # a per-window bias: a fourth
        compiled_call(*problem(9, 4, bias="B1", seed=2))
    assert counter.frame_count == 4


def test_grad_mode_selects_a_second_function_instead_of_recompiling(counter) -> None:
    # inputs that need no grad: FlexAttention refuses a CPU forward that would need a backward
    for seed in range(3):
        with torch.no_grad():
            compiled_call(*problem(4, 2, seed=seed))
        with torch.enable_grad():
            compiled_call(*problem(5, 2, seed=seed))
    assert counter.frame_count == 2
    assert _flex._compiled.cache_info().currsize == 2


def test_recompile_limit_is_an_error_not_a_silent_fallback(counter, monkeypatch) -> None:
    monkeypatch.setattr(_flex, "RECOMPILE_LIMIT", 1)
    with torch.no_grad():
        compiled_call(*problem(4, 2))
        with pytest.raises(Exception, match="recompile_limit"):
            compiled_call(*problem(4, 3))
