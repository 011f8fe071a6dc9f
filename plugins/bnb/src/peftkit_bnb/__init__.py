"""peftkit-bnb: the bitsandbytes backend. Importing this module loads neither torch nor bitsandbytes.

It answers the core's base-layer dispatch for ``bitsandbytes.nn.Linear8bitLt`` and
``bitsandbytes.nn.Linear4bit`` (nf4 and fp4, any compute dtype), so every method written
against the base-layer view works on 8-bit and 4-bit models.
"""

from __future__ import annotations

from typing import Any

from peftkit import hookimpl

LAYER_KINDS = {"Linear8bitLt": "linear", "Linear4bit": "linear"}


@hookimpl
def peftkit_base_layer_view(module: Any) -> Any:
    # A bitsandbytes layer can only exist once bitsandbytes is imported, so checking the defining
    # module first keeps plain models from ever importing it.
    if not type(module).__module__.startswith("bitsandbytes"):
        return None
    from peftkit_bnb.views import view_for

    return view_for(module)


@hookimpl
def peftkit_describe_backends() -> list[tuple[str, dict[str, str]]]:
    return [("bnb", LAYER_KINDS)]
