"""The conformance suite catches mistakes: a reference method passes it, and every planted mutant fails it.

The reference is a small (IA)^3-like method written here, ``scale``: one learned vector per adapter
that scales the input of the modules named in ``input_modules`` (through ``adapter_input``) and the
output of every other adapted module (through ``adapter_forward``), merged multiplicatively with the
bias pair. Each mutant is a subclass (or a registration) with one plausible mistake, the kind a
plugin author makes; its docstring says what is wrong and which behaviour of the suite catches it.
The suite runs on each through pytest itself (``pytest.main`` in this process, so that it sees the
method registered here): the reference must pass every behaviour, and each mutant must fail at least
one. A mutant that survives fails ``test_the_suite_catches_the_mutant[<its name>]``.

The compile behaviour is left out (it is slow and no mutant is about compiling), and each run stops
at its first failure, which keeps the whole module to seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import peftkit
from peftkit import AdapterLayer, UnsupportedLayerError, name_matcher
from peftkit._plugins import registry
from peftkit._registry import Method


@dataclass
class ScaleConfig(peftkit.PeftConfig):
    PEFT_TYPE: ClassVar[str] = "SCALE"

    input_modules: list[str] | str | None = None
    init_ones: bool = True


class ScaleLayer(AdapterLayer):
    """``y = base(x * v)`` on input-side modules, ``y = base(x) * v`` on the others; ``v`` starts at one."""

    adapter_dicts = ("scale_on_input",)

    def __init__(self, base_layer: nn.Module, view: Any) -> None:
        super().__init__(base_layer, view)
        self.scale_v = nn.ParameterDict()
        self.scale_on_input: dict[str, bool] = {}

    def sizes(self) -> tuple[int, int]:
        """(in, out) of the base layer, in the view's (out, in) sense."""
        return self.view.in_features, self.view.out_features

    def create_adapter(self, name: str, config: Any) -> None:
        if self.view.kind != "linear":
            raise UnsupportedLayerError(f"scale adapts linear layers, not {self.view.layer_type}")
        on_input = name_matcher(config.input_modules)(self.path)
        n_in, n_out = self.sizes()
        size = n_in if on_input else n_out
        self.scale_v[name] = nn.Parameter(torch.ones(size) if config.init_ones else torch.rand(size) + 0.5)
        self.scale_on_input[name] = on_input

    def vector(self, name: str) -> torch.Tensor:
        return self.scale_v[name]

    def adapter_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not self.scale_on_input[name]:
            return x
        v = self.vector(name)
        return (x.to(v.dtype) * v).to(x.dtype)

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        if self.scale_on_input[name]:
            return result
        v = self.vector(name)
        return (result.to(v.dtype) * v).to(result.dtype)

    def factor(self, name: str) -> torch.Tensor:
        """The vector as the (out, in) weight sees it: a row to scale columns, or a column to scale rows."""
        v = self.scale_v[name].detach().float()
        return v[None, :] if self.scale_on_input[name] else v[:, None]

    def merged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return weight * self.factor(name)

    def unmerged_weight(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        return weight / self.factor(name)

    def merged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        if self.scale_on_input[name] or bias is None:
            return None
        return bias * self.factor(name).flatten()

    def unmerged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        if self.scale_on_input[name] or bias is None:
            return None
        return bias / self.factor(name).flatten()


# --- the mutants ---------------------------------------------------------------------------------
class AddsStackedInputScales(ScaleLayer):
    """Scales the input on the output side, ``result + base(x * v) - base(x)``: right for one adapter,
    but stacked adapters then add their scales instead of multiplying them, and the base runs three
    times. Caught by the stacking behaviour (merging both differs) and the sides behaviour."""

    def adapter_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        if not self.scale_on_input[name]:
            return super().adapter_forward(x, result, name)
        v = self.vector(name)
        return result + self.view.forward((x.to(v.dtype) * v).to(x.dtype)) - self.view.forward(x)


class SwapsSidesInForward(ScaleLayer):
    """The forward scales the output where it should scale the input and the reverse, while merging
    scales the right side. Caught at once on the non-square layers (the vector does not fit the
    other side); on a square layer by merge/unmerge equivalence."""

    def adapter_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return (
            x
            if self.scale_on_input[name]
            else (x.to(self.vector(name).dtype) * self.vector(name)).to(x.dtype)
        )

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        if not self.scale_on_input[name]:
            return result
        return (result.to(self.vector(name).dtype) * self.vector(name)).to(result.dtype)


class SwapsSidesThroughout(ScaleLayer):
    """Input-side modules are scaled on their output and the reverse, consistently in shapes, forward
    and merge: self-consistent, so only a declared side shows it. Caught by the sides behaviour
    (each case declares ``input_side``)."""

    def create_adapter(self, name: str, config: Any) -> None:
        super().create_adapter(name, config)
        on_input = not self.scale_on_input[name]
        n_in, n_out = self.sizes()
        size = n_in if on_input else n_out
        self.scale_v[name] = nn.Parameter(torch.ones(size) if config.init_ones else torch.rand(size) + 0.5)
        self.scale_on_input[name] = on_input


class ForgetsMergedBias(ScaleLayer):
    """Merging an output-side vector scales the weight but not the bias. Caught by merge/unmerge."""

    def merged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        return None

    def unmerged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        return None


class MergesBiasOnlyOnLinear(ScaleLayer):
    """Handles the bias only when the base layer is an ``nn.Linear``, so GPT-2 ``Conv1D`` biases stay
    unscaled on merge. Invisible with the old all-zero Conv1D bias; caught by merge/unmerge on the
    Conv1D case now that every bias is random."""

    def merged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        return super().merged_bias(bias, name) if isinstance(self.base_layer, nn.Linear) else None

    def unmerged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        return super().unmerged_bias(bias, name) if isinstance(self.base_layer, nn.Linear) else None


class ScalesMergedBiasTwice(ScaleLayer):
    """Merging multiplies the bias by the vector twice (and unmerging divides twice, so it is its own
    exact inverse). Caught by merge/unmerge: the merged output differs."""

    def merged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        once = super().merged_bias(bias, name)
        return None if once is None else once * self.factor(name).flatten()

    def unmerged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        once = super().unmerged_bias(bias, name)
        return None if once is None else once / self.factor(name).flatten()


class UnmergeLeavesBias(ScaleLayer):
    """Unmerging restores the weight but leaves the bias scaled. Caught by merge/unmerge
    ("unmerge did not restore ...bias")."""

    def unmerged_bias(self, bias: torch.Tensor | None, name: str) -> torch.Tensor | None:
        return None


class SizesFromStoredWeight(ScaleLayer):
    """Reads (out, in) from the stored weight, as if every layer were an ``nn.Linear``: GPT-2's
    ``Conv1D`` stores (in, out), so its vectors get the wrong size. Invisible on the old square
    Conv1D; caught at the first forward on the non-square one."""

    def sizes(self) -> tuple[int, int]:
        n_out, n_in = self.base_layer.weight.shape
        return n_in, n_out


class IgnoresSampleRouting(ScaleLayer):
    """Applies the product of all active adapters' input scales at the first active one, which is right
    for a normal forward, but under ``adapter_names=[...]`` each row then gets the active adapters
    instead of its own. Caught by the mixed-batch behaviour."""

    def adapter_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not self.scale_on_input[name] or name != self.active_adapters[0]:
            return x
        scale = torch.ones_like(self.vector(name))
        for other in self.active_adapters:
            if self.scale_on_input[other]:
                scale = scale * self.vector(other)
        return (x.to(scale.dtype) * scale).to(x.dtype)


class RecomputesBaseOutput(ScaleLayer):
    """The output side recomputes ``base(x) * v`` instead of scaling ``result``, dropping what the
    adapters before it did. Caught by the stacking behaviour (two adapters act like the last one) and
    the sides behaviour (the base runs twice)."""

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        if self.scale_on_input[name]:
            return result
        v = self.vector(name)
        return (self.view.forward(x).to(v.dtype) * v).to(result.dtype)


class LeavesOutputInAdapterDtype(ScaleLayer):
    """Returns the scaled output in the adapter's dtype (float32) on a bfloat16 base, so the model's
    output dtype changes. Caught by the dtypes behaviour."""

    def adapter_forward(self, x: torch.Tensor, result: torch.Tensor, name: str) -> torch.Tensor:
        if self.scale_on_input[name]:
            return result
        v = self.vector(name)
        return result.to(v.dtype) * v


class DetachesVector(ScaleLayer):
    """Uses the vector detached in the forward, so training never changes it. Caught by the training
    behaviour ("training changed no adapter parameter")."""

    def vector(self, name: str) -> torch.Tensor:
        return self.scale_v[name].detach()


class StoresWithoutPrefix(ScaleLayer):
    """Keeps its vectors in ``self.vectors``, outside the method's ``scale_`` prefix, by which the core
    and the suite tell adapter tensors from base ones. Caught by the training behaviour (trainable
    parameters that are not the adapter's)."""

    def __init__(self, base_layer: nn.Module, view: Any) -> None:
        super().__init__(base_layer, view)
        del self.scale_v
        self.vectors = nn.ParameterDict()

    @property
    def scale_v(self) -> nn.ParameterDict:  # type: ignore[override]
        return self.vectors


class NestsItsStore(ScaleLayer):
    """Keeps its vectors one level deeper (``self.scale_store["v"][name]``), where ``delete_adapter``
    does not look, so a deleted adapter leaves its tensors behind. Caught by the several-adapters
    behaviour ("delete left tensors")."""

    def __init__(self, base_layer: nn.Module, view: Any) -> None:
        super().__init__(base_layer, view)
        del self.scale_v
        self.scale_store = nn.ModuleDict({"v": nn.ParameterDict()})

    @property
    def scale_v(self) -> nn.ParameterDict:  # type: ignore[override]
        return self.scale_store["v"]  # type: ignore[return-value]


def _overriding_targets(model: Any, config: Any) -> Any:
    """A prepare_config hook that forgets to check ``target_modules is None`` before filling defaults."""
    model_type = getattr(getattr(model.get_base_model(), "config", None), "model_type", None)
    return config.replace(target_modules=list(_DEFAULT_TARGETS[model_type])) if model_type else config


_DEFAULT_TARGETS = {"llama": ["k_proj", "v_proj", "down_proj"], "gpt2": ["c_attn"]}


@dataclass(frozen=True)
class Mutant:
    """A planted mistake: a layer class, or changes to the method's registration if the mistake is there."""

    name: str
    layer: type[AdapterLayer]
    registration: dict[str, Any] = dataclasses.field(default_factory=dict)
    mistake: str = ""

    def describe(self) -> str:
        return self.mistake or " ".join((self.layer.__doc__ or "").split())


MUTANTS = [
    Mutant("adds-stacked-input-scales", AddsStackedInputScales),
    Mutant("swaps-sides-in-forward", SwapsSidesInForward),
    Mutant("swaps-sides-throughout", SwapsSidesThroughout),
    Mutant("forgets-merged-bias", ForgetsMergedBias),
    Mutant("merges-bias-only-on-linear", MergesBiasOnlyOnLinear),
    Mutant("scales-merged-bias-twice", ScalesMergedBiasTwice),
    Mutant("unmerge-leaves-bias", UnmergeLeavesBias),
    Mutant("sizes-from-stored-weight", SizesFromStoredWeight),
    Mutant("ignores-sample-routing", IgnoresSampleRouting),
    Mutant("recomputes-base-output", RecomputesBaseOutput),
    Mutant("leaves-output-in-adapter-dtype", LeavesOutputInAdapterDtype),
    Mutant("detaches-vector", DetachesVector),
    Mutant("stores-without-prefix", StoresWithoutPrefix),
    Mutant("nests-its-store", NestsItsStore),
    Mutant(
        "default-targets-under-an-unknown-model-type",
        ScaleLayer,
        {"default_targets": {"Llama": _DEFAULT_TARGETS["llama"]}},
        "default_targets keyed 'Llama', which no model's config.model_type is, so the defaults never fill. "
        "Caught by the default-targets behaviour (model types transformers does not know).",
    ),
    Mutant(
        "prepare-config-overrides-targets",
        ScaleLayer,
        {"hooks": {"prepare_config": _overriding_targets}},
        "A prepare_config hook that fills the defaults without checking target_modules is None, so a "
        "user's target_modules on a llama model are ignored. Caught by the default-targets behaviour.",
    ),
]

# The suite as a plugin author would write it for ``scale``, each case declaring its input side. mlp:
# lin0 (16 -> 32) output side, lin1 input side; emb_conv1d: the Conv1D (32 -> 48) output side, so its
# random bias is merged, and lin (48 -> 8) input side.
_SUITE = """
from peftkit.testing import Case, ConformanceSuite


class TestScaleConformance(ConformanceSuite):
    method = "scale"
    identity_init = {"init_ones": True}
    random_init = {"init_ones": False}
    cases = [
        Case("mlp", {"target_modules": ["lin0", "lin1"], "input_modules": ["lin1"]}, id="mlp", input_side=["lin1"]),
        Case(
            "emb_conv1d",
            {"target_modules": ["conv1d", "lin"], "input_modules": ["lin"]},
            id="gpt2-conv1d",
            input_side=["lin"],
        ),
    ]
"""


class _Failures:
    """A pytest plugin that keeps the ids of the tests that failed, and counts those that ran."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.ran = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.ran += 1
        if report.failed:
            self.failed.append(report.nodeid.split("::", 1)[-1])


@pytest.fixture
def run_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Mutant | None], list[str]]:
    """Run the suite on the reference (None) or a mutant registered as ``scale``; the failing test ids."""
    suite = tmp_path / "test_scale_conformance.py"
    suite.write_text(_SUITE, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # not the repository's settings

    def run(mutant: Mutant | None) -> list[str]:
        layer = ScaleLayer if mutant is None else mutant.layer
        fields = {"default_targets": _DEFAULT_TARGETS, **({} if mutant is None else mutant.registration)}
        method = Method(
            name="scale", peft_type="SCALE", config=ScaleConfig, layer=layer, prefix="scale_", **fields
        )
        monkeypatch.setitem(registry().methods, "scale", method)
        # In this process (pytest.main), so the registry above is the one the suite sees. The first
        # failure is enough for a mutant; the reference must pass everything.
        stop = [] if mutant is None else ["--maxfail=1"]
        args = ["-q", "-p", "no:cacheprovider", "--import-mode=importlib", "-c", str(tmp_path / "pytest.ini")]
        args += ["-k", "not compiles"]
        failures = _Failures()
        pytest.main([*args, *stop, str(suite)], plugins=[failures])
        assert failures.ran, "the suite ran no test"
        return failures.failed

    return run


def test_the_reference_method_passes_the_suite(run_suite: Callable[[Mutant | None], list[str]]) -> None:
    assert run_suite(None) == []


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_suite_catches_the_mutant(
    mutant: Mutant, run_suite: Callable[[Mutant | None], list[str]]
) -> None:
    assert run_suite(mutant), (
        f"the conformance suite passes the planted mistake {mutant.name!r}: {mutant.describe()}"
    )
