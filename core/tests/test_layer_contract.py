"""A method's layer class may not shadow torch.nn.Module's own methods (MiSS once hid ``_apply``).

Every ``.to()``, ``.half()`` and ``.cuda()`` goes through ``nn.Module._apply``; a layer that reuses
such a name breaks them for every model of the method. The core refuses such a class when the
method is first used, naming the plugin, the class and the method, and the conformance suite's
device/dtype behaviour fails on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import peftkit
from peftkit import _plugins
from peftkit._registry import Method
from peftkit.layer import AdapterLayer, LayerContractError, check_layer_class
from peftkit.testing import Case, ConformanceSuite


@dataclass
class ShadowConfig(peftkit.PeftConfig):
    PEFT_TYPE: ClassVar[str] = "SHADOW"
    init_scale: float = 0.0


class ScaleLayer(AdapterLayer):
    """``y = (W x + b) * (1 + s)``: a well-behaved layer, the base of the mutants below."""

    def __init__(self, base_layer: nn.Module, view: Any) -> None:
        super().__init__(base_layer, view)
        self.shadow_s = nn.ParameterDict()

    def create_adapter(self, name: str, config: Any) -> None:
        self.shadow_s[name] = nn.Parameter(torch.full((self.view.out_features,), float(config.init_scale)))

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        return result * (1 + self.shadow_s[name]).to(result.dtype)

    def merged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return weight * (1 + self.shadow_s[name].detach()).to(weight.dtype)[:, None]

    def unmerged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return weight / (1 + self.shadow_s[name].detach()).to(weight.dtype)[:, None]


class ShadowingLayer(ScaleLayer):
    def _apply(self, weight: torch.Tensor, name: str) -> torch.Tensor:  # type: ignore[override]
        return self.merged_weight(weight, name)


class DeclaredOverrideLayer(ScaleLayer):
    overrides_module_methods = ("train",)

    def train(self, mode: bool = True) -> DeclaredOverrideLayer:
        return super().train(mode)


@pytest.fixture
def register(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Put a ``shadow`` method with the given layer class into the process-wide registry for one test."""

    def register(layer: type) -> None:
        method = Method(
            name="shadow",
            peft_type="SHADOW",
            config=ShadowConfig,
            layer=layer,
            prefix="shadow_",
            dist="peftkit-shadow",
            version="0.3",
        )
        monkeypatch.setitem(_plugins.registry().methods, "shadow", method)

    return register


def test_a_layer_shadowing_a_module_method_is_refused_naming_plugin_class_and_method(register: Any) -> None:
    register(ShadowingLayer)
    model = nn.Sequential(nn.Linear(4, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LayerContractError) as caught:
        peftkit.get_peft_model(model, peftkit.config("shadow", target_modules=["0"]))
    message = str(caught.value)
    assert "peftkit-shadow==0.3" in message and "ShadowingLayer" in message and "_apply" in message
    assert isinstance(model[0], nn.Linear) and all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )


def test_a_declared_override_is_accepted() -> None:
    assert check_layer_class(DeclaredOverrideLayer, "test") is DeclaredOverrideLayer
    with pytest.raises(LayerContractError, match=r"not a subclass of peftkit\.AdapterLayer"):
        check_layer_class(nn.Linear, "test")


class _ShadowSuite(ConformanceSuite):
    method = "shadow"
    identity_init: ClassVar[dict[str, Any]] = {"init_scale": 0.0}
    random_init: ClassVar[dict[str, Any]] = {"init_scale": 0.5}
    cases: ClassVar[list[Case]] = [Case("mlp", {"target_modules": ["lin0"]})]


@pytest.mark.parametrize(("layer", "passes"), [(ScaleLayer, True), (ShadowingLayer, False)])
def test_the_conformance_suite_moves_fail_on_a_shadowing_layer(
    register: Any, layer: type, passes: bool
) -> None:
    register(layer)
    run = lambda: _ShadowSuite().test_device_and_dtype_moves(_ShadowSuite.cases[0])  # noqa: E731
    if passes:
        run()
    else:
        with pytest.raises(LayerContractError, match="_apply"):
            run()


# --- the rest of the layer contract: a forward side, and overrides the core can call ------------
class NoSideLayer(AdapterLayer):
    def create_adapter(self, name: str, config: Any) -> None:
        pass


class WrongSignatureLayer(ScaleLayer):
    def adapter_forward(self, x: torch.Tensor, name: str) -> torch.Tensor:  # type: ignore[override]
        return x


class StaticCreateLayer(ScaleLayer):
    @classmethod
    def create_adapter(cls, name: str, config: Any) -> None:  # type: ignore[override]
        pass


def test_a_layer_with_no_forward_side_is_refused() -> None:
    with pytest.raises(LayerContractError, match=r"implements neither adapter_forward\(x, result, name\)"):
        check_layer_class(NoSideLayer, "method 'x' of peftkit-x==1")


def test_an_override_the_core_cannot_call_is_refused_with_the_expected_signature() -> None:
    with pytest.raises(LayerContractError) as caught:
        check_layer_class(WrongSignatureLayer, "method 'x' of peftkit-x==1")
    message = str(caught.value)
    assert "method 'x' of peftkit-x==1: layer class" in message and "WrongSignatureLayer" in message
    assert "adapter_forward(self, x: 'torch.Tensor', name: 'str')" in message
    assert "adapter_forward(self, x: 'torch.Tensor', result: 'torch.Tensor', name: 'str')" in message
    with pytest.raises(LayerContractError, match=r"create_adapter must be an instance method"):
        check_layer_class(StaticCreateLayer, "method 'x'")


def test_prepare_config_must_return_a_config(register: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    register(ScaleLayer)
    method = _plugins.registry().methods["shadow"]
    broken = Method(**{**method.__dict__, "hooks": {"prepare_config": lambda model, config: None}})
    monkeypatch.setitem(_plugins.registry().methods, "shadow", broken)
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(
        peftkit.PluginContractError, match=r"prepare_config hook returned NoneType, expected the ShadowConfig"
    ):
        peftkit.get_peft_model(model, peftkit.config("shadow", target_modules=["0"]))
    assert isinstance(model[0], nn.Linear)
