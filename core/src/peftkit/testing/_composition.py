"""The suite's behaviours about adapters used together and about the side of the base layer they act on.

A mixin of :class:`peftkit.testing.ConformanceSuite`, which provides ``wrap``, ``random_init``,
``_second_config``, ``is_adapter_param`` and the tolerances these use. Each behaviour builds the
case's adapter ``default`` and a second one, ``other``, both drawn at random.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from peftkit.layer import AdapterLayer
from peftkit.testing._probes import _base_params, _run
from peftkit.testing.models import make_inputs

if TYPE_CHECKING:
    from peftkit.testing.suite import Case


class CompositionBehaviours:
    """Behaviours 14 (several active adapters), 15 (mixed batches) and 16 (input and output sides)."""

    identity_atol: ClassVar[float]
    merge_atol: ClassVar[float]
    unmerge_atol: ClassVar[float]
    random_init: ClassVar[dict[str, Any]]

    def wrap(self, case: Any, init: Any, seed: int = 0, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _second_config(self, case: Any) -> Any:
        raise NotImplementedError

    def is_adapter_param(self, name: str) -> bool:
        raise NotImplementedError

    def _two_adapters(self, case: Case) -> Any:
        """The case's model with adapters ``default`` (seed 0) and ``other`` (seed 1), ``default`` active."""
        model = self.wrap(case, self.random_init, seed=0)
        torch.manual_seed(1)
        model.add_adapter("other", self._second_config(case))
        return model.eval()

    @staticmethod
    def _each_alone(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output with each adapter active on its own, and with none (``"__base__"``)."""
        from peftkit.per_sample import BASE

        outputs = {}
        for name in ("default", "other"):
            model.set_adapter(name)
            outputs[name] = _run(model, x)
        with model.disable_adapter():
            outputs[BASE] = _run(model, x)
        return outputs

    # --- 14. several active adapters ------------------------------------------------------------
    def test_several_active_adapters_stack(self, case: Case) -> None:
        """With ``set_adapter(["default", "other"])`` both adapters act: the output differs from each alone,
        and merging both gives the output of running them unmerged (so the forward composes adapters the
        way stacked merges do: input scales multiply, updates of the running output compose); unmerging
        restores the base weights."""
        x = make_inputs(case.model)
        model = self._two_adapters(case)
        alone = self._each_alone(model, x)
        model.set_adapter(["default", "other"])
        both = _run(model, x)
        for name in ("default", "other"):
            assert not torch.allclose(both, alone[name], atol=self.identity_atol), (
                f"with adapters ['default', 'other'] active the output is that of {name!r} alone"
            )
        base_params = [(n, p, p.detach().clone()) for n, p in _base_params(model, self.is_adapter_param)]
        model.merge_adapter()
        torch.testing.assert_close(
            _run(model, x),
            both,
            atol=self.merge_atol,
            rtol=0,
            msg=lambda m: f"merging both active adapters changed the output of running them unmerged: {m}",
        )
        model.unmerge_adapter()
        for name, p, before in base_params:
            torch.testing.assert_close(
                p,
                before,
                atol=self.unmerge_atol,
                rtol=0,
                msg=f"unmerging both adapters did not restore {name}",
            )
        torch.testing.assert_close(_run(model, x), both, atol=self.merge_atol, rtol=0)

    # --- 15. mixed batches ----------------------------------------------------------------------
    def test_mixed_batch_matches_each_adapter_alone(self, case: Case) -> None:
        """``model(x, adapter_names=[...])`` gives each sample what its adapter gives alone (``"__base__"``:
        no adapter), whatever adapters are active at the time, and leaves the active set as it was."""
        from peftkit.per_sample import BASE

        x = make_inputs(case.model)
        model = self._two_adapters(case)
        alone = self._each_alone(model, x)
        names = ["other", "default", BASE, "other"][: x.shape[0]]
        for active in (["default"], ["default", "other"]):
            model.set_adapter(active)
            with torch.no_grad():
                mixed = model(x, adapter_names=names)
            for i, name in enumerate(names):
                # Sub-batches run matmuls of other shapes: equal up to float32 rounding (default tolerances).
                torch.testing.assert_close(
                    mixed[i],
                    alone[name][i],
                    msg=lambda m, i=i, name=name, active=active: (  # type: ignore[misc]
                        f"sample {i} routed to {name!r} (active adapters {active}) differs from {name!r} alone: {m}"
                    ),
                )
            assert list(model.active_adapters) == active, "a mixed batch changed the active adapters"

    # --- 16. input and output sides -------------------------------------------------------------
    def test_input_and_output_sides(self, case: Case) -> None:
        """Each adapted layer runs its base layer at most once per forward (one adapter, two stacked, a
        mixed batch): an adapter composes with the base output or transforms the input, it never runs the
        base layer again. Where the case declares ``input_side``, the base layer sees a changed input on
        exactly those modules and the unchanged one on every other adapted module."""
        from peftkit import name_matcher
        from peftkit.per_sample import BASE

        x = make_inputs(case.model)
        model = self._two_adapters(case)
        layers = {path: m for path, m in model.named_modules() if isinstance(m, AdapterLayer)}
        runs: list[tuple[str, list[str], dict[str, Any]]] = [
            ("one adapter", ["default"], {}),
            ("two stacked adapters", ["default", "other"], {}),
            (
                "a mixed batch",
                ["default"],
                {"adapter_names": ["other", "default", BASE, "other"][: x.shape[0]]},
            ),
        ]
        for label, active, kwargs in runs:
            model.set_adapter(active)
            with _watch_base_inputs(layers) as seen, torch.no_grad():
                model(x, **kwargs)
            twice = sorted(path for path, w in seen.items() if w.base_calls > w.calls)
            assert not twice, f"with {label}, the base layer of {twice} ran more than once per forward"
        if case.input_side is None:
            return
        declared = name_matcher(case.input_side)
        model.set_adapter("default")
        with _watch_base_inputs(layers) as seen, torch.no_grad():
            model(x)
        wrong = [
            f"{path} is declared input_side, but its base layer saw the layer's input unchanged"
            if declared(path)
            else f"{path} is not declared input_side, but its base layer saw a changed input"
            for path, w in seen.items()
            if w.base_input is not None and w.input_changed != declared(path)
        ]
        assert not wrong, "; ".join(wrong)


class _Watch:
    """What one adapter layer and its base layer were called with during a forward."""

    def __init__(self) -> None:
        self.calls = 0
        self.base_calls = 0
        self.input: torch.Tensor | None = None
        self.base_input: torch.Tensor | None = None

    @property
    def input_changed(self) -> bool:
        """Whether the base layer saw something else than the adapter layer was given (last call of each)."""
        if self.input is None or self.base_input is None:
            return False
        return self.input.shape != self.base_input.shape or not torch.equal(self.input, self.base_input)


@contextmanager
def _watch_base_inputs(layers: dict[str, AdapterLayer[Any]]) -> Iterator[dict[str, _Watch]]:
    """Count the calls of each adapter layer and of its base layer, keeping the last input of each."""
    seen = {path: _Watch() for path in layers}
    handles = []
    for path, layer in layers.items():
        watch = seen[path]

        def on_layer(_module: nn.Module, args: tuple[Any, ...], watch: _Watch = watch) -> None:
            watch.calls += 1
            watch.input = _first_tensor(args)

        def on_base(_module: nn.Module, args: tuple[Any, ...], watch: _Watch = watch) -> None:
            watch.base_calls += 1
            watch.base_input = _first_tensor(args)

        handles.append(layer.register_forward_pre_hook(on_layer))
        handles.append(layer.base_layer.register_forward_pre_hook(on_base))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _first_tensor(args: tuple[Any, ...]) -> torch.Tensor | None:
    first = args[0] if args else None
    return first.detach().clone() if isinstance(first, torch.Tensor) else None
