"""The LoRA layer: ``y = base(x) + scaling * B(A(dropout(x)))`` for every active adapter.

Shapes by base-layer kind (``r`` = rank, ``scaling = alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA):

* linear (``nn.Linear``, GPT-2 ``Conv1D``): ``lora_A`` ``(r, in)``, ``lora_B`` ``(out, r)``;
  ``delta_W = scaling * B @ A`` in ``(out, in)`` layout.
* embedding: ``lora_embedding_A`` ``(r, num_embeddings)``, ``lora_embedding_B`` ``(dim, r)``;
  ``delta_W = scaling * (B @ A).T``.
* convolution: ``lora_A`` a convolution with the base kernel, stride, padding and dilation to
  ``r`` channels; ``lora_B`` a 1x1 convolution back to ``out`` channels (grouped like the base).

Each kind is one entry of ``_KINDS``; adding a kind is adding an entry. DoRA (``dora.py``) and the
inits that rewrite the base weight (``pissa.py``) live in their own modules; ``set_scale`` /
``scale_layer`` / ``unscale_layer`` change ``scaling`` as Hugging Face PEFT's do.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from peftkit import AdapterLayer, BaseLayerView
from peftkit_lora import dora, hotswap, pissa
from peftkit_lora.config import LoraConfig

# lora_A / lora_B hold one linear or convolution per adapter; nn.ModuleDict types its items as Module.
_Projection = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
if TYPE_CHECKING:
    from peftkit.views import ConvView, EmbeddingView

    class _Projections(nn.ModuleDict):
        def __getitem__(self, key: str) -> _Projection: ...
else:
    _Projections = nn.ModuleDict


class LoraLayer(AdapterLayer[LoraConfig]):
    adapter_dicts = ("scaling", "r", "initial_scaling", "dora_norms")
    # A hot-swap may bring another rank (up to the loaded one) and alpha: see hotswap.py.
    hotswap_settings = ("r", "lora_alpha", "rank_pattern", "alpha_pattern")

    def __init__(self, base_layer: nn.Module, view: BaseLayerView) -> None:
        super().__init__(base_layer, view)
        self.lora_A = _Projections()
        self.lora_B = _Projections()
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.lora_magnitude_vector = nn.ParameterDict()  # DoRA adapters only
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.initial_scaling: dict[str, float] = {}  # what set_scale / unscale_layer scale from
        self.dora_norms: dict[str, torch.Tensor] = {}  # per merged DoRA adapter, to unmerge exactly
        self.r: dict[str, int] = {}
        self.kind = _KINDS[view.kind]

    @classmethod
    def before_inject(cls, owner: nn.Module, config: LoraConfig, name: str, layers: Any) -> None:
        """Check every target first, so that an init which rewrites base weights never stops half-way."""
        if config.changes_base_weights:
            pissa.check_supported(layers, str(config.init_lora_weights))

    def create_adapter(self, name: str, config: LoraConfig) -> None:
        r, alpha = config.rank_and_alpha(self.path)
        if r <= 0:
            raise ValueError(f"LoRA r must be positive, got {r} for {self.path or 'this layer'}")
        self.r[name] = r
        self.scaling[name] = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        self.initial_scaling[name] = self.scaling[name]
        self.lora_dropout[name] = (
            nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        )
        if config.lora_bias and self.view.bias is None:
            warnings.warn(
                f"lora_bias=True on {self.path or 'a layer'}: the targeted layer of type "
                f"{self.view.layer_type} has no bias, so this adapter cannot be merged into it"
            )
        self.kind.create(self, name, r, config)
        if config.changes_base_weights:
            pissa.init_from_base(self, name, str(config.init_lora_weights))
        if config.use_dora:  # after any init that rewrites the base weight: m is the norm of the final weight
            dora.create_magnitude(self, name)

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        if name in self.lora_magnitude_vector:
            return dora.forward(self, x, result, name)
        return self.kind.forward(self, x, result, name)

    def delta_weight(self, name: str) -> torch.Tensor:
        return self.kind.delta(self, name)

    def add_delta_to_weight(self, name: str, alpha: float) -> None:
        if self.view.kind != "linear":
            super().add_delta_to_weight(name, alpha)
            return
        # W += alpha * scaling * B @ A as one fused matmul-accumulate: no weight-sized delta is built.
        A, B = self.lora_A[name].weight.detach(), self.lora_B[name].weight.detach()
        scale = alpha * float(self.scaling[name])
        self.view.update_weight(lambda w: w.addmm_(B, A, alpha=scale), A.dtype)

    def delta_bias(self, name: str) -> torch.Tensor | None:
        bias = self.lora_B[name].bias if name in self.lora_B else None
        return None if bias is None else bias.detach() * self.scaling[name]

    # --- DoRA makes merging non-additive --------------------------------------------------
    @property
    def is_additive(self) -> bool:
        return len(self.lora_magnitude_vector) == 0

    def merged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        if name in self.lora_magnitude_vector:
            return dora.merged_weight(self, weight, name)
        return weight + self.delta_weight(name).to(weight.dtype)

    def unmerged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        if name in self.lora_magnitude_vector:
            return dora.unmerged_weight(self, weight, name)
        return weight - self.delta_weight(name).to(weight.dtype)

    # --- hot-swapping (peftkit.hotswap_adapter) -------------------------------------------
    def prepare_hotswap(self, target_rank: int | None) -> None:
        hotswap.prepare(self, target_rank)

    def check_hotswap(self, name: str, key: str, current: torch.Tensor, new: torch.Tensor) -> str | None:
        return hotswap.check(current, new, key)

    def hotswap_tensor(self, name: str, key: str, current: torch.Tensor, new: torch.Tensor) -> None:
        hotswap.write(current, new, key)

    def hotswap_config(self, name: str, config: Any) -> None:
        hotswap.adopt_scaling(self, name, config)

    # --- scaling ---------------------------------------------------------------------------
    def set_scale(self, adapter: str, scale: float) -> None:
        """Set adapter ``adapter``'s scaling to ``scale`` times its configured ``alpha / r``; absent adapters are ignored."""
        if adapter in self.initial_scaling:
            self.scaling[adapter] = scale * self.initial_scaling[adapter]

    def scale_layer(self, scale: float) -> None:
        """Multiply the current scaling of every active adapter by ``scale``."""
        for name in self.active_adapters:
            self.scaling[name] *= scale

    def unscale_layer(self, scale: float | None = None) -> None:
        """Divide the current scaling of every active adapter by ``scale``; None restores the configured one."""
        for name in self.active_adapters:
            if scale is None:
                self.scaling[name] = self.initial_scaling[name]
            else:
                self.scaling[name] /= scale


class _Kind:
    """How LoRA builds, runs and merges its update on one kind of base layer (see ``_KINDS``)."""

    @staticmethod
    def create(layer: LoraLayer, name: str, r: int, config: Any) -> None:
        raise NotImplementedError

    @staticmethod
    def forward(layer: LoraLayer, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def delta(layer: LoraLayer, name: str) -> torch.Tensor:
        raise NotImplementedError


class _LinearKind(_Kind):
    @staticmethod
    def create(layer: LoraLayer, name: str, r: int, config: Any) -> None:
        view = layer.view
        layer.lora_A[name] = _uninitialized_linear(view.in_features, r, bias=False)
        layer.lora_B[name] = _uninitialized_linear(r, view.out_features, bias=config.lora_bias)
        _init_ab(layer.lora_A[name].weight, layer.lora_B[name], r, config.init_lora_weights)

    @staticmethod
    def forward(layer: LoraLayer, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        lora_A, lora_B = layer.lora_A[name], layer.lora_B[name]
        h = lora_A(layer.lora_dropout[name](x.to(lora_A.weight.dtype)))
        if (
            lora_B.bias is None
            and h.dtype == result.dtype
            and not isinstance(layer.scaling[name], torch.Tensor)
        ):
            # result + scaling * h @ B^T in one fused kernel (no scaled copy, no separate add).
            flat = torch.addmm(
                result.reshape(-1, result.shape[-1]),
                h.reshape(-1, h.shape[-1]),
                lora_B.weight.T,
                alpha=layer.scaling[name],
            )
            return flat.view(result.shape)
        return _add_scaled(result, lora_B(h), layer.scaling[name])

    @staticmethod
    def delta(layer: LoraLayer, name: str) -> torch.Tensor:
        return (layer.lora_B[name].weight @ layer.lora_A[name].weight) * layer.scaling[name]


class _EmbeddingKind(_Kind):
    @staticmethod
    def create(layer: LoraLayer, name: str, r: int, config: Any) -> None:
        if config.lora_bias:
            raise ValueError("lora_bias=True is not supported on embedding layers")
        view = layer.view
        layer.lora_embedding_A[name] = nn.Parameter(torch.randn(r, view.in_features))
        layer.lora_embedding_B[name] = nn.Parameter(torch.randn(view.out_features, r))
        if config.init_lora_weights is not False:
            # Embedding convention: A starts at zero and B random, so the update is zero at start.
            nn.init.zeros_(layer.lora_embedding_A[name])
            nn.init.normal_(layer.lora_embedding_B[name])

    @staticmethod
    def forward(layer: LoraLayer, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        A, B = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
        after_a = F.embedding(x, A.T, **cast("EmbeddingView", layer.view).embedding_kwargs())
        return result + ((after_a @ B.T) * layer.scaling[name]).to(result.dtype)

    @staticmethod
    def delta(layer: LoraLayer, name: str) -> torch.Tensor:
        A, B = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
        return (B @ A).T * layer.scaling[name]


class _ConvKind(_Kind):
    @staticmethod
    def create(layer: LoraLayer, name: str, r: int, config: Any) -> None:
        view = cast("ConvView", layer.view)
        if r % view.groups:
            raise ValueError(f"LoRA r={r} must be divisible by the convolution's groups={view.groups}")
        conv = type(view.module)
        ones = (1,) * view.conv_dim
        layer.lora_A[name] = conv(
            view.in_features,
            r,
            view.kernel_size,
            view.stride,
            view.padding,
            dilation=view.dilation,
            bias=False,
        )
        layer.lora_B[name] = conv(r, view.out_features, ones, ones, groups=view.groups, bias=config.lora_bias)
        _init_ab(layer.lora_A[name].weight, layer.lora_B[name], r, config.init_lora_weights)

    @staticmethod
    def forward(layer: LoraLayer, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        lora_A, lora_B = layer.lora_A[name], layer.lora_B[name]
        h = lora_B(lora_A(layer.lora_dropout[name](x.to(lora_A.weight.dtype))))
        return _add_scaled(result, h, layer.scaling[name])

    @staticmethod
    def delta(layer: LoraLayer, name: str) -> torch.Tensor:
        view = cast("ConvView", layer.view)
        A = layer.lora_A[name].weight  # (r, in, *k)
        B = layer.lora_B[name].weight.flatten(1)  # (out, r / groups)
        if view.groups > 1:
            # lora_A is a full convolution, so the update mixes all input channels: no grouped kernel holds it.
            raise NotImplementedError(
                f"cannot merge LoRA adapter {name!r} into {layer.path or 'a convolution'}: it has "
                f"groups={view.groups}, and a LoRA update of a grouped convolution is not grouped; "
                "use the adapter unmerged (Hugging Face PEFT cannot merge it either)"
            )
        delta = torch.einsum("or,ri...->oi...", B, A)
        return delta * layer.scaling[name]


def _add_scaled(result: torch.Tensor, update: torch.Tensor, scaling: float) -> torch.Tensor:
    return result + (update * scaling).to(result.dtype)


def _uninitialized_linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """An ``nn.Linear`` whose tensors are allocated but not initialised; ``_init_ab`` fills them.

    ``nn.Linear.__init__`` would draw a Kaiming init that ``_init_ab`` then overwrites: drawing
    random numbers is most of the cost of creating a LoRA adapter, so it is done once, not twice.
    """
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.in_features, linear.out_features = in_features, out_features
    linear.weight = nn.Parameter(torch.empty(out_features, in_features))
    linear.bias = nn.Parameter(torch.empty(out_features)) if bias else None  # type: ignore[assignment]  # torch types it as always set
    return linear


def _init_ab(a_weight: torch.Tensor, lora_B: _Projection, r: int, init: bool | str) -> None:
    if init is False or (isinstance(init, str) and init.lower() != "gaussian"):
        # Random (tests), or overwritten from the base weight afterwards (PiSSA, OLoRA): the layers'
        # own default init, as if they had been built normally.
        lora_B.reset_parameters()
        nn.init.kaiming_uniform_(a_weight, a=math.sqrt(5))
        return
    if init is True:
        nn.init.kaiming_uniform_(a_weight, a=math.sqrt(5))
    else:  # "gaussian"
        nn.init.normal_(a_weight, std=1 / r)
    nn.init.zeros_(lora_B.weight)
    if lora_B.bias is not None:
        nn.init.zeros_(lora_B.bias)


_KINDS: dict[str, type[_Kind]] = {"linear": _LinearKind, "embedding": _EmbeddingKind, "conv": _ConvKind}
