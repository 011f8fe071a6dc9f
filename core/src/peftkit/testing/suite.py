"""The behaviours every layer-adapting method plugin must show, as one parametrized pytest class.

Everything here goes through the public API (``peftkit.config``, ``peftkit.get_peft_model``,
``PeftModel`` methods); the only thing the suite learns from the registry is the method's
parameter-name ``prefix``, which is how it tells adapter parameters from base parameters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import peftkit
from peftkit.layer import AdapterLayer, ModulesToSave, UnsafeMergeError
from peftkit.testing._composition import CompositionBehaviours
from peftkit.testing._defaults import DefaultTargetBehaviours
from peftkit.testing._probes import (
    _adapter_modules,
    _assert_grad,
    _base_params,
    _cast_input,
    _copy_param_names,
    _expect_grad_change,
    _run,
    _supported_low_precision,
)
from peftkit.testing._runtime import RuntimeBehaviours
from peftkit.testing.models import make_inputs, make_model

__all__ = ["Case", "ConformanceSuite"]

# The output layer of each tiny model: what a case without modules_to_save gets as one for that test.
_HEADS = {
    "mlp": "lin2",
    "emb_conv1d": "lin",
    "conv1d": "lin",
    "conv2d": "lin",
    "conv3d": "lin",
    "llama_like": "lm_head",
}


@dataclass(frozen=True)
class Case:
    """One configuration to run every behaviour on: a tiny model's name and the method's config fields.

    ``config`` must not contain the init fields; the suite adds ``identity_init`` or ``random_init``.
    ``id`` names the case in test ids (default ``<model>-<index>``). ``input_side`` declares which
    adapted modules the method acts on through their input (names or a regex, like
    ``target_modules``): the suite then checks that exactly those base layers see a changed input
    and every other adapted one the unchanged input. None (the default) declares nothing.
    """

    model: str
    config: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    input_side: str | Sequence[str] | None = None


class ConformanceSuite(RuntimeBehaviours, CompositionBehaviours, DefaultTargetBehaviours):
    """Subclass as ``Test<Method>Conformance`` and set ``method``, ``identity_init``, ``random_init``, ``cases``.

    Tolerances are class attributes so a method with inherently inexact merging can widen them,
    visibly, in its own test file.
    """

    method: ClassVar[str] = ""
    identity_init: ClassVar[dict[str, Any]] = {}
    random_init: ClassVar[dict[str, Any]] = {}
    cases: ClassVar[list[Case]] = []
    identity_atol: ClassVar[float] = 1e-6
    merge_atol: ClassVar[float] = 1e-4
    unmerge_atol: ClassVar[float] = 1e-5
    train_steps: ClassVar[int] = 3
    learning_rate: ClassVar[float] = 1e-3

    @pytest.fixture(autouse=True)
    def _one_thread(self) -> Iterator[None]:
        # Intra-op threads only add synchronisation cost on models this small, badly so on a busy machine.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    # --- collection (called by the pytest plugin) ---------------------------------------------
    @classmethod
    def cases_for(cls, test_name: str) -> list[tuple[Case, str]]:
        """The (case, test id) pairs that ``test_name`` runs on."""
        cls._check_declaration()
        labelled = [(case, case.id or f"{case.model}-{i}") for i, case in enumerate(cls.cases)]
        if test_name != "test_modules_to_save":
            return labelled
        picked = [
            (saving, label) for c, label in labelled if (saving := _with_modules_to_save(c)) is not None
        ]
        if not picked:
            raise ValueError(
                f"{cls.__name__}: no case can exercise modules_to_save (every case adapts the model's output "
                "layer); add a Case with modules_to_save=[...] naming a module the adapter does not target"
            )
        return picked

    @classmethod
    def _check_declaration(cls) -> None:
        if not cls.method or not cls.cases:
            raise ValueError(
                f"{cls.__name__} must set `method` (a registered method name) and a non-empty `cases`"
            )
        if not cls.prefix():
            raise ValueError(
                f"method {cls.method!r} registers no parameter prefix; the suite cannot find its parameters"
            )
        for case in cls.cases:
            for key in (*cls.identity_init, *cls.random_init):
                if key in case.config:
                    raise ValueError(
                        f"{cls.__name__}: case {case} sets {key!r}; the suite sets the init fields itself"
                    )

    @classmethod
    def prefix(cls) -> str:
        from peftkit._plugins import registry

        return registry().by_name(cls.method).prefix

    # --- helpers --------------------------------------------------------------------------------
    def config(self, case: Case, init: Mapping[str, Any], **extra: Any) -> Any:
        """The method's config for ``case`` with the init fields ``init``; override to build it differently."""
        return peftkit.config(self.method, **{**case.config, **init, **extra})

    def wrap(self, case: Case, init: Mapping[str, Any], seed: int = 0, **kwargs: Any) -> Any:
        """A fresh base model wrapped with adapter ``default``; ``seed`` fixes the adapter's random init."""
        base = make_model(case.model)
        torch.manual_seed(seed)
        return peftkit.get_peft_model(base, self.config(case, init), **kwargs)

    def is_adapter_param(self, name: str) -> bool:
        """Whether a parameter name belongs to the method: one of its dotted parts starts with the prefix."""
        return any(part.startswith(self.prefix()) for part in name.split("."))

    def train(self, model: nn.Module, x: torch.Tensor) -> None:
        """A few SGD steps on every parameter that requires grad."""
        params = [p for p in model.parameters() if p.requires_grad]
        assert params, "the model has no trainable parameter"
        optimizer = torch.optim.SGD(params, lr=self.learning_rate)
        model.train()
        for _ in range(self.train_steps):
            optimizer.zero_grad()
            loss = model(x).float().pow(2).mean()
            assert torch.isfinite(loss), f"training diverged (loss {loss.item()})"
            loss.backward()
            optimizer.step()
        model.eval()

    # --- 1. forward ----------------------------------------------------------------------------
    def test_forward_shape(self, case: Case) -> None:
        x = make_inputs(case.model)
        expected = _run(make_model(case.model), x)
        model = self.wrap(case, self.random_init)
        assert any(isinstance(m, AdapterLayer) for m in model.modules()), "no layer was adapted"
        out = _run(model, x)
        assert out.shape == expected.shape and out.dtype == expected.dtype
        assert torch.isfinite(out).all()

    # --- 2. identity at init -------------------------------------------------------------------
    def test_identity_at_init(self, case: Case) -> None:
        x = make_inputs(case.model)
        expected = _run(make_model(case.model), x)
        out = _run(self.wrap(case, self.identity_init), x)
        torch.testing.assert_close(out, expected, atol=self.identity_atol, rtol=0)

    # --- 3. training changes only adapter parameters --------------------------------------------
    def test_training_changes_only_adapter(self, case: Case) -> None:
        x = make_inputs(case.model)
        base = make_model(case.model)
        base_out = _run(base, x)
        base_params = {name: (p, p.detach().clone()) for name, p in base.named_parameters()}
        torch.manual_seed(0)
        model = peftkit.get_peft_model(base, self.config(case, self.random_init))
        assert not torch.allclose(_run(model, x), base_out, atol=self.identity_atol), (
            "random init left output unchanged"
        )

        may_train = self._may_train(model, case)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable <= may_train, (
            f"non-adapter parameters are trainable: {sorted(trainable - may_train)}"
        )
        adapter_before = {
            n: p.detach().clone() for n, p in model.named_parameters() if self.is_adapter_param(n)
        }
        assert adapter_before and any(n in trainable for n in adapter_before), (
            "no adapter parameter is trainable"
        )

        self.train(model, x)
        allowed = {id(p) for n, p in model.named_parameters() if n in may_train}
        for name, (param, before) in base_params.items():
            if id(param) not in allowed:
                assert torch.equal(param, before), f"base parameter {name} changed in training"
        current = dict(model.named_parameters())
        assert any(not torch.equal(current[n], v) for n, v in adapter_before.items()), (
            "training changed no adapter parameter"
        )

    def _may_train(self, model: nn.Module, case: Case) -> set[str]:
        """Names of the parameters training may touch: the adapter's, module copies, and biases if ``bias`` asks."""
        names = set(_copy_param_names(model))
        names |= {n for n, _ in model.named_parameters() if self.is_adapter_param(n)}
        if case.config.get("bias", "none") != "none":
            names |= {n for n, _ in model.named_parameters() if n.endswith(".bias")}
        return names

    # --- 4. save / load ------------------------------------------------------------------------
    def test_save_load_roundtrip(self, case: Case, tmp_path: Any) -> None:
        x = make_inputs(case.model)
        model = self.wrap(case, self.random_init)
        self.train(model, x)  # so that trained biases and module copies must round-trip too
        expected = _run(model, x)
        model.save_pretrained(tmp_path)

        with open(os.path.join(tmp_path, "adapter_config.json"), encoding="utf-8") as fh:
            raw = json.load(fh, object_pairs_hook=list)
        keys = [k for k, _ in raw]
        assert keys == sorted(keys), "adapter_config.json keys are not sorted"
        assert dict(raw).get("peft_type"), "adapter_config.json has no peft_type"
        self._check_saved_keys(tmp_path)

        loaded = peftkit.PeftModel.from_pretrained(make_model(case.model), tmp_path)
        assert torch.equal(_run(loaded, x), expected), "the reloaded adapter gives different outputs"

    def _check_saved_keys(self, folder: Any) -> None:
        from safetensors import safe_open

        from peftkit._plugins import registry

        model_level = {f"base_model.{a}" for a in registry().by_name(self.method).model_level}
        with safe_open(os.path.join(folder, "adapter_model.safetensors"), framework="pt") as fh:
            keys = list(fh.keys())
        assert keys, "the adapter file holds no tensor"
        for key in keys:
            assert key.startswith("base_model.model.") or key in model_level, f"bad on-disk key {key!r}"
            assert "default" not in key.split("."), f"on-disk key {key!r} contains the adapter name"

    # --- 5. merge / unmerge / unload -----------------------------------------------------------
    def test_merge_unmerge_unload(self, case: Case) -> None:
        x = make_inputs(case.model)
        model = self.wrap(case, self.random_init)
        base_params = [(n, p, p.detach().clone()) for n, p in _base_params(model, self.is_adapter_param)]
        unmerged = _run(model, x)

        model.merge_adapter()
        merged = _run(model, x)
        torch.testing.assert_close(merged, unmerged, atol=self.merge_atol, rtol=0)
        assert any(not torch.equal(p, before) for _, p, before in base_params), (
            "merging changed no base weight"
        )
        after_first = [p.detach().clone() for _, p, _ in base_params]
        with pytest.warns(UserWarning, match="already merged"):
            model.merge_adapter()
        assert all(torch.equal(p, a) for (_, p, _), a in zip(base_params, after_first, strict=True)), (
            "merging twice is not a no-op"
        )
        torch.testing.assert_close(_run(model, x), merged, atol=0, rtol=0)

        model.unmerge_adapter()
        for name, p, before in base_params:
            torch.testing.assert_close(
                p, before, atol=self.unmerge_atol, rtol=0, msg=f"unmerge did not restore {name}"
            )
        torch.testing.assert_close(_run(model, x), unmerged, atol=self.merge_atol, rtol=0)

        plain = model.merge_and_unload()
        assert not _adapter_modules(plain), "merge_and_unload left adapter modules in the model"
        torch.testing.assert_close(_run(plain, x), unmerged, atol=self.merge_atol, rtol=0)

    def test_unload_returns_original(self, case: Case) -> None:
        x = make_inputs(case.model)
        original = make_model(case.model).state_dict()
        base_out = _run(make_model(case.model), x)
        for merge_first in (False, True):
            model = self.wrap(case, self.random_init)
            if merge_first:
                model.merge_adapter()
            plain = model.unload()
            assert not _adapter_modules(plain), "unload left adapter modules in the model"
            state = plain.state_dict()
            assert state.keys() == original.keys(), "unload did not restore the original module names"
            atol = self.unmerge_atol if merge_first else 0.0
            for key, value in original.items():
                torch.testing.assert_close(state[key], value, atol=atol, rtol=0, msg=f"unload changed {key}")
            torch.testing.assert_close(
                _run(plain, x), base_out, atol=self.merge_atol if merge_first else 0.0, rtol=0
            )

    # --- 6. safe merge -------------------------------------------------------------------------
    def test_safe_merge_detects_nan(self, case: Case) -> None:
        model = self.wrap(case, self.random_init)
        base_params = [(n, p, p.detach().clone()) for n, p in _base_params(model, self.is_adapter_param)]
        layer = next(m for m in model.modules() if isinstance(m, AdapterLayer))
        candidates = [
            (n, p) for n, p in layer.named_parameters() if self.is_adapter_param(n) and p.is_floating_point()
        ]
        assert candidates, "the first adapted layer has no floating adapter parameter"
        # Each adapter tensor in turn: whichever one goes bad, the merged weights would be bad.
        for name, param in candidates:
            kept = param.detach().clone()
            with torch.no_grad():
                param.fill_(float("nan"))
            for attempt in (model.merge_adapter, model.merge_and_unload):
                try:
                    attempt(safe_merge=True)
                except UnsafeMergeError:
                    pass
                else:
                    raise AssertionError(f"{attempt.__name__}(safe_merge=True) accepted NaN in {name}")
                for base_name, p, before in base_params:
                    assert torch.equal(p, before), f"a refused safe merge (NaN in {name}) changed {base_name}"
            with torch.no_grad():
                param.copy_(kept)

    # --- 7. disable ----------------------------------------------------------------------------
    def test_disable_adapter(self, case: Case) -> None:
        x = make_inputs(case.model)
        base_out = _run(make_model(case.model), x)
        model = self.wrap(case, self.random_init)
        adapted = _run(model, x)
        assert not torch.allclose(adapted, base_out, atol=self.identity_atol)
        with model.disable_adapter():
            torch.testing.assert_close(_run(model, x), base_out, atol=self.identity_atol, rtol=0)
        torch.testing.assert_close(_run(model, x), adapted, atol=0, rtol=0)
        model.merge_adapter()  # disabling a merged adapter must take it back out of the weights
        with model.disable_adapter():
            torch.testing.assert_close(_run(model, x), base_out, atol=self.merge_atol, rtol=0)
        torch.testing.assert_close(_run(model, x), adapted, atol=self.merge_atol, rtol=0)

    # --- 8. several adapters -------------------------------------------------------------------
    def _second_config(self, case: Case) -> Any:
        """The case's config for a second adapter, made to be active together with the first.

        Base biases are shared, so only the first adapter trains them; a ``modules_to_save`` copy
        cannot be combined with another adapter's, so only the first keeps one.
        """
        config = self.config(case, self.random_init)
        changes: dict[str, Any] = {}
        if getattr(config, "bias", "none") != "none":
            changes["bias"] = "none"
        if getattr(config, "modules_to_save", None):
            changes["modules_to_save"] = None
        return config.replace(**changes) if changes else config

    def test_multiple_adapters(self, case: Case, tmp_path: Any) -> None:
        x = make_inputs(case.model)
        model = self.wrap(case, self.random_init, seed=0)
        out_default = _run(model, x)
        torch.manual_seed(1)
        model.add_adapter("other", self._second_config(case))
        torch.testing.assert_close(
            _run(model, x), out_default, atol=0, rtol=0, msg="adding an adapter changed outputs"
        )
        model.set_adapter("other")
        out_other = _run(model, x)
        assert not torch.allclose(out_other, out_default, atol=self.identity_atol), (
            "set_adapter did not switch"
        )
        model.set_adapter("default")
        torch.testing.assert_close(_run(model, x), out_default, atol=0, rtol=0)

        model.save_pretrained(tmp_path)
        assert os.path.isfile(os.path.join(tmp_path, "other", "adapter_config.json")), (
            "adapter 'other' not in a sub-folder"
        )
        loaded = peftkit.PeftModel.from_pretrained(make_model(case.model), tmp_path)
        loaded.load_adapter(os.path.join(tmp_path, "other"), adapter_name="other")
        assert torch.equal(_run(loaded, x), out_default)
        loaded.set_adapter("other")
        assert torch.equal(_run(loaded, x), out_other)

        model.set_adapter("other")
        model.delete_adapter("other")
        assert "other" not in model.peft_config
        left = [n for n, _ in [*model.named_parameters(), *model.named_buffers()] if "other" in n.split(".")]
        assert not left, f"delete left tensors of the deleted adapter: {left}"
        torch.testing.assert_close(_run(model, x), out_default, atol=0, rtol=0)
        try:
            model.set_adapter("other")
        except ValueError:
            pass
        else:
            raise AssertionError("set_adapter accepted a deleted adapter")

    # --- 9. requires_grad ----------------------------------------------------------------------
    def test_requires_grad_rules(self, case: Case, tmp_path: Any) -> None:
        model = self.wrap(case, self.random_init)
        _assert_grad(model, "default", True)
        torch.manual_seed(1)
        model.add_adapter("other", self._second_config(case))
        _assert_grad(model, "default", True)
        # Each call may change the flags of the adapter it names and of nothing else.
        _expect_grad_change(model, lambda: model.set_requires_grad("other", False), "other", False)
        _expect_grad_change(model, lambda: model.set_adapter("other"), None, None)
        _expect_grad_change(model, lambda: model.set_requires_grad("default", False), "default", False)
        _expect_grad_change(model, lambda: model.set_requires_grad("default", True), "default", True)
        _expect_grad_change(model, lambda: model.set_adapter("default"), None, None)
        _expect_grad_change(model, lambda: model.set_adapter(["default", "other"]), None, None)
        model.save_pretrained(tmp_path)

        frozen = peftkit.PeftModel.from_pretrained(make_model(case.model), tmp_path)
        frozen.load_adapter(os.path.join(tmp_path, "other"), adapter_name="other")
        frozen.set_adapter("other")
        grads = [n for n, p in frozen.named_parameters() if p.requires_grad]
        assert not grads, f"an inference-mode model has trainable parameters: {grads}"

        trainable = peftkit.PeftModel.from_pretrained(make_model(case.model), tmp_path, is_trainable=True)
        _assert_grad(trainable, "default", True)

    # --- 10. dtypes ----------------------------------------------------------------------------
    def test_dtypes(self, case: Case) -> None:
        x = make_inputs(case.model)
        for dtype in _supported_low_precision(case.model, x):
            for autocast in (True, False):
                base = make_model(case.model).to(dtype)
                torch.manual_seed(0)
                model = peftkit.get_peft_model(
                    base, self.config(case, self.random_init), autocast_adapter_dtype=autocast
                )
                want = torch.float32 if autocast else dtype
                adapter = {
                    n: p.dtype
                    for n, p in model.named_parameters()
                    if self.is_adapter_param(n) and p.is_floating_point()
                }
                assert adapter and set(adapter.values()) == {want}, (
                    f"{dtype}, autocast={autocast}: adapter dtypes {adapter}"
                )
                unmerged = _run(model, _cast_input(x, dtype))
                assert unmerged.dtype == dtype and torch.isfinite(unmerged).all()
                model.merge_adapter()
                base_dtypes = {p.dtype for _, p in _base_params(model, self.is_adapter_param)}
                assert base_dtypes == {dtype}, f"merging changed the base dtype to {base_dtypes}"
                merged = _run(model, _cast_input(x, dtype))
                assert merged.dtype == dtype
                # Low precision rounds the merged weight; compare at the scale of the output.
                scale = unmerged.float().abs().max().item() + 1.0
                torch.testing.assert_close(merged.float(), unmerged.float(), atol=0.05 * scale, rtol=0)

    # --- 11. modules_to_save -------------------------------------------------------------------
    def test_modules_to_save(self, case: Case, tmp_path: Any) -> None:
        x = make_inputs(case.model)
        model = self.wrap(case, self.random_init)
        wrappers = [m for m in model.modules() if isinstance(m, ModulesToSave)]
        assert wrappers, f"modules_to_save={case.config['modules_to_save']} wrapped nothing"
        originals = [(p, p.detach().clone()) for w in wrappers for p in w.original_module.parameters()]
        copies = [
            (p, p.detach().clone()) for w in wrappers for p in w.modules_to_save["default"].parameters()
        ]
        assert all(p.requires_grad for p, _ in copies) and not any(p.requires_grad for p, _ in originals)

        self.train(model, x)
        assert all(torch.equal(p, before) for p, before in originals), "training changed an original module"
        assert any(not torch.equal(p, before) for p, before in copies), (
            "training did not change the module copy"
        )
        expected = _run(model, x)
        with model.disable_adapter():
            torch.testing.assert_close(
                _run(model, x), _run(make_model(case.model), x), atol=self.identity_atol, rtol=0
            )

        model.save_pretrained(tmp_path)
        loaded = peftkit.PeftModel.from_pretrained(make_model(case.model), tmp_path)
        assert torch.equal(_run(loaded, x), expected), "the module copy did not round-trip"


# --- module-level helpers ----------------------------------------------------------------------


def _with_modules_to_save(case: Case) -> Case | None:
    """The case itself if it sets modules_to_save, else a copy saving the model's output layer if not targeted."""
    if case.config.get("modules_to_save"):
        return case
    head = _HEADS.get(case.model)
    targets = case.config.get("target_modules")
    if head is None or targets is None or targets == "all-linear":
        return None
    from peftkit._targeting import name_matcher

    if name_matcher(targets)(head):
        return None
    return Case(case.model, {**case.config, "modules_to_save": [head]}, case.id, case.input_side)
