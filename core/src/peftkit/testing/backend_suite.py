"""The behaviours every base-layer backend must show with every installed method that adapts its layers.

A backend plugin (bitsandbytes, HQQ, torchao...) subclasses :class:`BackendSuite` in its tests
and says how to build a small model whose targeted layers it serves; the suite then runs each
installed method whose ``view_kinds`` meet the kinds the backend declares in
``peftkit_describe_backends``, on each of the backend's variants (``"nf4"``, ``"int8"``...)::

    from peftkit.testing import BackendSuite

    class TestHqqBackend(BackendSuite):
        backend = "hqq"                          # the name peftkit_describe_backends gives
        variants = ["4bit", "2bit"]
        target_modules = ["q_proj", "v_proj"]
        method_configs = {"oft": ("oft", {"oft_block_size": 16})}   # where a method's defaults do not fit

        def make_model(self, variant): ...       # the same quantized model (same bits) on every call
        def make_reference(self, variant): ...   # the full-precision model it was quantized from
        def make_inputs(self, variant): ...      # keyword arguments of the model's forward

Methods absent from ``method_configs`` run with their default config (and ``target_modules``);
``method_configs`` may also add variants of a method under their own ids (``"lora-dora"``).
Tolerances scale with the backend's own rounding: ``rounding`` times how far the quantized
base's outputs are from the reference's, plus ``atol`` (``merge_atol`` for merges); without a
reference, the absolute part alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

import peftkit
from peftkit._injection import adapter_layers
from peftkit.testing._probes import _adapter_modules
from peftkit.testing.suite import ConformanceSuite
from peftkit.views import MergeNotSupportedError

if TYPE_CHECKING:
    from peftkit._registry import Backend

__all__ = ["BackendCase", "BackendSuite"]

# (suite class, variant) -> how far that variant's base outputs are from its reference's
_BASE_ERRORS: dict[tuple[type, str], float] = {}


@dataclass(frozen=True)
class BackendCase:
    """One method configuration on one backend variant; ``id`` names it in test ids."""

    method: str
    variant: str
    config: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""


PERTURBATION_ROUNDS = 8  # the noise doubles each round: up to 128x ``perturbation``


class BackendSuite:
    """Subclass as ``Test<Backend>Backend``; set ``backend``, ``variants``, ``target_modules`` and
    implement ``make_model`` and ``make_inputs`` (``make_reference`` too, where there is one).

    Every ``test_*`` method runs once per :class:`BackendCase` (argument ``case``).
    """

    backend: ClassVar[str] = ""
    variants: ClassVar[Sequence[str]] = ("default",)
    target_modules: ClassVar[Sequence[str] | str] = ()
    method_configs: ClassVar[Mapping[str, tuple[str, Mapping[str, Any]]]] = {}
    atol: ClassVar[float] = 1e-5
    merge_atol: ClassVar[float] = 1e-4
    rounding: ClassVar[float] = 2.0
    perturbation: ClassVar[float] = 0.02
    train_steps: ClassVar[int] = 4
    learning_rate: ClassVar[float] = 1e-2

    _one_thread = ConformanceSuite._one_thread  # one intra-op thread: much faster on models this small

    # --- what a backend provides --------------------------------------------------------------
    def make_model(self, variant: str) -> nn.Module:
        """A small model whose targeted layers this backend serves; every call gives the same weights."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_model(variant)")

    def make_reference(self, variant: str) -> nn.Module | None:
        """The full-precision model ``make_model(variant)`` stands for, or None when there is none."""
        return None

    def make_inputs(self, variant: str) -> Mapping[str, torch.Tensor]:
        """Keyword arguments for the model's forward (``{"input_ids": ..., "labels": ...}``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_inputs(variant)")

    def outputs(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The tensor compared across models: ``logits`` where the model returns them, else the output."""
        model.eval()
        with torch.no_grad():
            out = model(**inputs)
        return getattr(out, "logits", out)

    def loss(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The training loss: the model's ``loss`` where it returns one, else the mean squared output."""
        out = model(**inputs)
        loss = getattr(out, "loss", None)
        return loss if isinstance(loss, torch.Tensor) else out.float().pow(2).mean()

    # --- collection (called by the pytest plugin) ---------------------------------------------
    @classmethod
    def described(cls) -> Backend:
        """This backend as the installed plugins describe it (``peftkit_describe_backends``)."""
        from peftkit._plugins import registry

        found = [b for b in registry().backends if b.name == cls.backend]
        if not found:
            names = ", ".join(b.name for b in registry().backends)
            raise ValueError(
                f"{cls.__name__}: no installed plugin describes a backend {cls.backend!r} (described: {names}); "
                "set `backend` to the name your peftkit_describe_backends returns, and install your plugin"
            )
        return found[0]

    @classmethod
    def cases(cls) -> list[BackendCase]:
        """Every (method configuration, variant) this backend is tested on."""
        from peftkit._plugins import registry

        kinds = set(cls.described().view_kinds)
        methods = registry().methods
        configs = {key: spec for key, spec in cls.method_configs.items() if spec[0] in methods}
        for key, (name, _) in configs.items():
            if not kinds & set(methods[name].view_kinds):
                raise ValueError(
                    f"{cls.__name__}: method_configs[{key!r}] names {name!r}, which adapts "
                    f"{list(methods[name].view_kinds)} views; backend {cls.backend!r} serves {sorted(kinds)}"
                )
        named = {name for name, _ in configs.values()}
        for name, method in sorted(methods.items()):
            if method.layer is not None and kinds & set(method.view_kinds) and name not in named:
                configs[name] = (name, {})
        if not configs:
            raise ValueError(
                f"{cls.__name__}: no installed method adapts {sorted(kinds)} views; install a method plugin "
                f"(for example peftkit-lora) to test backend {cls.backend!r} with"
            )
        return [
            BackendCase(name, variant, fields, f"{variant}-{key}")
            for variant in cls.variants
            for key, (name, fields) in configs.items()
        ]

    # --- helpers --------------------------------------------------------------------------------
    def config(self, case: BackendCase) -> Any:
        """The method's config for ``case``; override to build it differently."""
        return peftkit.config(case.method, **{"target_modules": self.target_modules, **case.config})

    def wrap(self, case: BackendCase, base: nn.Module | None = None, seed: int = 0) -> Any:
        """``base`` (default: a fresh ``make_model``) wrapped with the case's adapter, its init fixed by ``seed``."""
        base = self.make_model(case.variant) if base is None else base
        torch.manual_seed(seed)
        return peftkit.get_peft_model(base, self.config(case))

    def perturb(self, model: nn.Module, scale: float | None = None, seed: int = 2) -> None:
        """Push every trainable tensor away from its init (noise of std ``scale``, default ``perturbation``),
        so the adapter clearly changes the output."""
        generator = torch.Generator().manual_seed(seed)
        scale = self.perturbation if scale is None else scale
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    noise = torch.randn(param.shape, generator=generator) * scale
                    param.add_(noise.to(param.device, param.dtype))

    def visible_effect(self, model: Any, inputs: Mapping[str, torch.Tensor], above: float) -> float:
        """Perturb the adapter, more each round, until it moves the outputs by more than ``above``; that move.

        A merge check within a tolerance means something only when losing the adapter would exceed it.
        """
        effect = 0.0
        # Multiplicative methods (IA3 vectors near one) need larger pushes than additive ones on a tiny model.
        for round_ in range(PERTURBATION_ROUNDS):
            self.perturb(model, self.perturbation * 2**round_, seed=2 + round_)
            with model.disable_adapter():
                base = self.outputs(model, inputs)
            effect = _max_diff(self.outputs(model, inputs), base)
            if effect > above:
                return effect
        raise AssertionError(
            f"the adapter moves the outputs by only {effect:.3g} after {PERTURBATION_ROUNDS} rounds of perturbation, "
            f"within the tolerance {above:.3g} of the checks; raise `perturbation`"
        )

    def tolerance(self, variant: str, atol: float | None = None) -> float:
        """How far outputs may move by the backend's rounding: ``rounding`` x the base's error, plus ``atol``."""
        key = (type(self), variant)
        if key not in _BASE_ERRORS:
            reference = self.make_reference(variant)
            inputs = self.make_inputs(variant)
            _BASE_ERRORS[key] = (
                0.0
                if reference is None
                else _max_diff(
                    self.outputs(self.make_model(variant), inputs), self.outputs(reference, inputs)
                )
            )
        return (self.atol if atol is None else atol) + self.rounding * _BASE_ERRORS[key]

    def is_adapter_tensor(self, case: BackendCase, name: str) -> bool:
        """Whether a parameter or buffer name belongs to the method (a dotted part starts with its prefix)."""
        from peftkit._plugins import registry

        prefix = registry().by_name(case.method).prefix
        return any(part.startswith(prefix) for part in name.split("."))

    # --- 1. the backend's views serve the method ---------------------------------------------------
    def test_adapts_through_this_backend(self, case: BackendCase) -> None:
        inputs = self.make_inputs(case.variant)
        model = self.wrap(case)
        described = self.described()
        layers = list(adapter_layers(model))
        assert layers, f"{case.method} adapted no layer of {self.target_modules}"
        for path, layer in layers:
            view = layer.view
            assert view.layer_type in described.kinds, (
                f"{path}: {type(view).__name__} serves a {view.layer_type}, which backend {self.backend!r} "
                f"does not describe (it describes {dict(described.kinds)}); add it to peftkit_describe_backends"
            )
            assert view.kind == described.kinds[view.layer_type], (
                f"{path}: the view's kind is {view.kind!r}, but the backend describes "
                f"{view.layer_type} as {described.kinds[view.layer_type]!r}"
            )
            assert view.module is layer.base_layer, f"{path}: the view does not wrap the layer's base_layer"
        self.perturb(model)
        out = self.outputs(model, inputs)
        with model.disable_adapter():
            base_out = self.outputs(model, inputs)
        assert out.shape == base_out.shape, f"output shape {tuple(out.shape)}, base {tuple(base_out.shape)}"
        assert torch.isfinite(out).all(), "the adapted model's output is not finite"

    # --- 2. training reaches only the adapter ----------------------------------------------------
    def test_training_reaches_only_the_adapter(self, case: BackendCase) -> None:
        # No eval forward before training: some backends repack weights for inference at the first one.
        inputs = self.make_inputs(case.variant)
        model = self.wrap(case)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert trainable, "the adapted model has no trainable parameter"
        foreign = sorted(n for n in trainable if not self.is_adapter_tensor(case, n))
        assert not foreign, f"base parameters are trainable: {foreign}"
        base = {n: t.detach().clone() for n, t in _tensors(model) if not self.is_adapter_tensor(case, n)}

        model.train()
        optimizer = torch.optim.Adam(trainable.values(), lr=self.learning_rate)
        losses = []
        for step in range(self.train_steps):
            loss = self.loss(model, inputs)
            assert torch.isfinite(loss), f"training diverged (loss {loss.item()})"
            loss.backward()
            if step == 0:
                reached = sorted(n for n, p in model.named_parameters() if p.grad is not None)
                assert set(reached) <= set(trainable), f"gradients reached frozen tensors: {reached}"
                assert any(p.grad.abs().sum() > 0 for p in trainable.values() if p.grad is not None), (
                    "no adapter parameter got a gradient"
                )
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        with torch.no_grad():
            losses.append(self.loss(model, inputs).item())
        assert losses[-1] < losses[0], f"training did not lower the loss: {losses}"
        after = dict(_tensors(model))
        changed = sorted(n for n, before in base.items() if not torch.equal(after[n], before))
        assert not changed, f"training changed base tensors: {changed}"

    # --- 3. save / load, on this backend and across to the reference -----------------------------
    def test_save_load_roundtrip(self, case: BackendCase, tmp_path: Path) -> None:
        inputs = self.make_inputs(case.variant)
        model = self.wrap(case)
        self.perturb(model)
        expected = self.outputs(model, inputs)
        model.save_pretrained(tmp_path / "backend")
        loaded = peftkit.PeftModel.from_pretrained(self.make_model(case.variant), tmp_path / "backend")
        assert _max_diff(self.outputs(loaded, inputs), expected) <= self.atol, (
            "the reloaded adapter gives different outputs on the same base"
        )
        reference = self.make_reference(case.variant)
        if reference is None:
            return
        # Across bases the outputs differ by the base's own rounding: tolerance() measures it.
        tol = self.tolerance(case.variant)
        on_reference = peftkit.PeftModel.from_pretrained(reference, tmp_path / "backend")
        diff = _max_diff(self.outputs(on_reference, inputs), expected)
        assert diff <= tol, (
            f"on the reference model the adapter's outputs moved by {diff:.3g} (allowed {tol:.3g})"
        )
        made = self.wrap(case, base=self.make_reference(case.variant))
        self.perturb(made)
        made.save_pretrained(tmp_path / "reference")
        back = peftkit.PeftModel.from_pretrained(self.make_model(case.variant), tmp_path / "reference")
        diff = _max_diff(self.outputs(back, inputs), self.outputs(made, inputs))
        assert diff <= tol, f"an adapter made on the reference moved by {diff:.3g} here (allowed {tol:.3g})"

    # --- 4. merge / unmerge / unload ----------------------------------------------------------
    def test_merge_unmerge_roundtrip(self, case: BackendCase) -> None:
        inputs = self.make_inputs(case.variant)
        model = self.wrap(case)
        tol = self.tolerance(case.variant, self.merge_atol)
        self.visible_effect(model, inputs, above=2 * tol)
        unmerged = self.outputs(model, inputs)
        names = [n for n, _ in _tensors(model)]
        adapted = [path for path, _ in adapter_layers(model.get_base_model())]
        try:
            model.merge_adapter()
        except MergeNotSupportedError:
            assert not any(layer.merged_adapters for _, layer in adapter_layers(model)), (
                "a refused merge left adapters merged"
            )
            assert torch.equal(self.outputs(model, inputs), unmerged), "a refused merge changed the outputs"
            return
        self._check_after(model, "merge_adapter", inputs, unmerged, tol, names)
        model.unmerge_adapter()
        self._check_after(model, "unmerge_adapter", inputs, unmerged, tol, names)

        plain = model.merge_and_unload()
        assert not _adapter_modules(plain), "merge_and_unload left adapter modules in the model"
        diff = _max_diff(self.outputs(plain, inputs), unmerged)
        assert diff <= tol, f"after merge_and_unload the outputs moved by {diff:.3g} (allowed {tol:.3g})"
        served = self.described().kinds
        for path in adapted:
            layer_type = type(plain.get_submodule(path)).__name__
            assert layer_type in served, (
                f"merge_and_unload left a {layer_type} at {path}, not a layer it served"
            )

    def _check_after(
        self,
        model: Any,
        step: str,
        inputs: Mapping[str, torch.Tensor],
        unmerged: torch.Tensor,
        tol: float,
        names: list[str],
    ) -> None:
        """After ``step``: outputs within ``tol``, the same tensor names, each layer holding its view's module."""
        diff = _max_diff(self.outputs(model, inputs), unmerged)
        assert diff <= tol, f"after {step} the outputs moved by {diff:.3g} (allowed {tol:.3g})"
        assert [n for n, _ in _tensors(model)] == names, f"{step} changed the model's tensor names"
        for path, layer in adapter_layers(model):
            assert layer.view.module is layer.base_layer, (
                f"{path}: after {step} the view wraps another module than base_layer; a view that builds "
                "a new layer must install it with view.replace_module"
            )


# --- module-level helpers ----------------------------------------------------------------------


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and buffers by name, without ``state_dict()``: some quantized layers rewrite themselves for it."""
    yield from model.named_parameters()
    yield from model.named_buffers()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()
