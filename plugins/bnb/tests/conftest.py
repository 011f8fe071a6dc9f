"""Run the packing-sensitive tests as on both kinds of CPU.

bitsandbytes repacks a 4-bit weight for its CPU inference kernel at the first eval forward, but only
on CPUs with AVX512-BF16 (it asks ``has_avx512bf16()`` when a ``Linear4bit`` is built). The plugin
must be right either way, so these tests run once as on a CPU without it (forced off, any machine)
and once with packing where this CPU has it.
"""

from __future__ import annotations

import pytest


def cpu_packs() -> bool:
    """Whether bitsandbytes packs 4-bit weights for inference on this CPU."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


@pytest.fixture(params=["avx512bf16", "no-avx512bf16"])
def packs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """True when 4-bit layers built in this test get packed at an eval forward, False when they never do."""
    if request.param == "no-avx512bf16":
        import bitsandbytes.nn.modules

        monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: False)
        return False
    if not cpu_packs():
        pytest.skip(
            "this CPU has no AVX512-BF16, so bitsandbytes never packs here; the no-avx512bf16 case ran"
        )
    return True
