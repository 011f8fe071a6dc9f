"""The suite's behaviours about where and how a model runs: device and dtype moves, torch.compile.

A mixin of :class:`peftkit.testing.ConformanceSuite`, which provides ``wrap``, ``config``,
``random_init`` and the tolerances these use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from peftkit.layer import AdapterLayer, shadowed_module_methods
from peftkit.testing._probes import _cast_input, _run, _supported_low_precision
from peftkit.testing.models import make_inputs, make_model

if TYPE_CHECKING:
    from peftkit.testing.suite import Case


class RuntimeBehaviours:
    """Behaviours 12 (moves) and 13 (compile) of the conformance suite."""

    merge_atol: ClassVar[float]
    random_init: ClassVar[dict[str, Any]]

    def wrap(self, case: Any, init: Any, seed: int = 0, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _second_config(self, case: Any) -> Any:
        raise NotImplementedError

    # --- 12. device and dtype moves ------------------------------------------------------------
    def test_device_and_dtype_moves(self, case: Case) -> None:
        """``.to(dtype)``, ``.half()``, ``.bfloat16()``, ``.float()``, ``.to(device)`` move every tensor and keep outputs."""
        x = make_inputs(case.model)
        model = self.wrap(case, self.random_init)
        for layer_class in {type(m) for m in model.modules() if isinstance(m, AdapterLayer)}:
            shadowed = shadowed_module_methods(layer_class)
            assert not shadowed, f"{layer_class.__qualname__} shadows torch.nn.Module's {shadowed}"
        expected = _run(model, x)
        runnable = _supported_low_precision(case.model, x)
        moves = [
            (torch.bfloat16, lambda m: m.to(torch.bfloat16), lambda m: m.to(torch.float32)),
            (torch.bfloat16, lambda m: m.bfloat16(), lambda m: m.float()),
            (torch.float16, lambda m: m.half(), lambda m: m.to(dtype=torch.float32)),
        ]
        for dtype, there, back in moves:
            there(model)
            floats = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
            assert floats == {dtype}, f"moving to {dtype} left tensors in {floats - {dtype}}"
            if dtype in runnable:
                low = _run(model, _cast_input(x, dtype))
                assert low.dtype == dtype and torch.isfinite(low).all(), f"forward in {dtype} after the move"
            back(model)
            # The round trip rounds every weight to the low dtype once: compare at the output's scale.
            scale = expected.abs().max().item() + 1.0
            torch.testing.assert_close(_run(model, x), expected, atol=0.05 * scale, rtol=0)
        model = self.wrap(case, self.random_init)
        expected = _run(model, x)
        devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
        for device in devices:
            model.to(device)
            assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {device}
            out = _run(model, x.to(device))
            torch.testing.assert_close(out.cpu(), expected, atol=self.merge_atol, rtol=0)
        model.to("cpu")
        assert torch.equal(_run(model, x), expected), "a move to a device and back changed the outputs"

    # --- 13. torch.compile ---------------------------------------------------------------------
    #: The Dynamo backend the compile behaviour uses; "aot_eager" traces forward and backward
    #: through AOTAutograd without generating code, which keeps the suite fast.
    compile_backend: ClassVar[str] = "aot_eager"

    def test_compiles_as_one_graph(self, case: Case) -> None:
        """``torch.compile(model, fullgraph=True)`` traces the adapted forward as one graph (eval and
        training, one or several active adapters, adapters disabled) with eager's outputs and gradients."""
        import torch._dynamo as dynamo

        x = make_inputs(case.model)
        model = self.wrap(case, self.random_init)
        for module in model.modules():  # random masks would differ between the two runs compared
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        dynamo.reset()
        explained = dynamo.explain(model.eval())(x)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (
            f"{explained.graph_count} graphs, breaks: {[str(b.reason)[:200] for b in explained.break_reasons]}"
        )
        compiled = torch.compile(model, backend=self.compile_backend, fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
            with model.disable_adapter():
                torch.testing.assert_close(compiled(x), _run(make_model(case.model), x), atol=1e-5, rtol=1e-5)
        model.train()
        eager_grads = self._grads(model, model, x)
        compiled_grads = self._grads(model, compiled, x)
        assert eager_grads.keys() == compiled_grads.keys() and eager_grads
        for name, grad in eager_grads.items():
            torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
        torch.manual_seed(1)
        model.add_adapter("other", self._second_config(case))
        model.set_adapter(["default", "other"])
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
        dynamo.reset()

    @staticmethod
    def _grads(model: nn.Module, run: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        run(x).float().pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
