"""Plugin discovery and the method registry, with a fresh plugin manager and fake entry points per test."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

import peftkit
from peftkit import _plugins
from peftkit._plugins import ALLOW_ENV, build_registry, make_plugin_manager
from peftkit._registry import DuplicateMethodError, Method, Registry, UnknownMethodError


class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version


class FakeEntryPoint:
    """What discovery reads from ``importlib.metadata``: name, value, dist and ``load()``."""

    def __init__(
        self,
        name: str,
        plugin: Any = None,
        dist: str = "peftkit-fake",
        version: str = "1.0",
        error: Exception | None = None,
    ) -> None:
        self.name = name
        self.value = f"fake_{name.replace('-', '_')}"
        self.dist = FakeDist(dist, version)
        self._plugin = plugin
        self._error = error

    def load(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._plugin


class MethodsPlugin:
    """Registers the given methods, then raises ``fail_with`` if set."""

    def __init__(self, *methods: Any, fail_with: Exception | None = None) -> None:
        self.methods = methods
        self.fail_with = fail_with

    @peftkit.hookimpl
    def peftkit_register_methods(self, register: Any) -> None:
        for method in self.methods:
            register(method)
        if self.fail_with is not None:
            raise self.fail_with


def method(name: str, peft_type: str | None = None) -> Method:
    # The config class is a lazy string that does not exist: registering must never import it.
    return Method(
        name=name, peft_type=peft_type or name.upper(), config="no_such_module:Config", prefix=f"{name}_"
    )


def ep(
    name: str, *methods: Method, dist: str | None = None, version: str = "1.0", **kw: Any
) -> FakeEntryPoint:
    return FakeEntryPoint(
        name, MethodsPlugin(*methods, **kw), dist=dist or f"peftkit-{name}", version=version
    )


@pytest.fixture
def discover(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv(ALLOW_ENV, raising=False)

    def discover(*entry_points: FakeEntryPoint) -> tuple[Any, Registry]:
        pm = make_plugin_manager(entry_points=list(entry_points))
        return pm, build_registry(pm)

    return discover


def test_method_from_fake_plugin_is_registered_with_its_distribution(discover: Any) -> None:
    _, registry = discover(ep("scale", method("scale"), version="2.5"))
    found = registry.by_name("scale")
    assert (found.name, found.peft_type, found.dist, found.version) == (
        "scale",
        "SCALE",
        "peftkit-scale",
        "2.5",
    )
    assert registry.by_peft_type("SCALE") is found
    assert registry.by_name("SCALE") is found  # a PEFT type is accepted where a name is expected
    assert registry.broken == {}
    # Proves the lazy config was never imported during discovery; the error names the plugin.
    with pytest.raises(ImportError, match=r"method .scale. of peftkit-scale==2\.5.*no_such_module"):
        _ = found.config_class


def test_plugin_whose_import_raises_is_broken_and_others_still_work(discover: Any) -> None:
    bad = FakeEntryPoint(
        "bad", dist="peftkit-bad", version="0.3", error=ImportError("needs the 'zzz' package")
    )
    pm, registry = discover(bad, ep("good", method("good")))
    assert registry.broken == {"bad": "peftkit-bad==0.3: ImportError: needs the 'zzz' package"}
    assert list(registry.methods) == ["good"]
    assert pm.get_plugin("bad") is None
    with pytest.raises(UnknownMethodError, match=r"failed to load: bad \(peftkit-bad==0.3: ImportError"):
        registry.by_name("bad")


def test_register_hook_that_raises_is_broken_and_registers_nothing(discover: Any) -> None:
    half = ep("half", method("half"), fail_with=RuntimeError("boom in register"))
    pm, registry = discover(half, ep("good", method("good")))
    assert registry.broken == {"half": "peftkit-half==1.0: RuntimeError: boom in register"}
    assert list(registry.methods) == ["good"]  # "half" was registered before the raise, and withdrawn
    assert pm.get_plugin("half") is None  # none of its other hooks will answer either


class MethodAndBadConverterPlugin(MethodsPlugin):
    @peftkit.hookimpl
    def peftkit_register_converters(self, register: Any) -> None:
        register("Not A Valid Name", "x:y")


def test_plugin_failing_in_a_later_hook_contributes_nothing(discover: Any) -> None:
    _, registry = discover(FakeEntryPoint("mixed", MethodAndBadConverterPlugin(method("mixed"))))
    assert "ValueError: converter name 'Not A Valid Name' must be lower case" in registry.broken["mixed"]
    assert registry.methods == {} and registry.converters == {}


def test_a_broken_plugin_does_not_hide_a_good_one_of_the_same_name(discover: Any) -> None:
    bad = FakeEntryPoint("scale", dist="old-scale", error=ImportError("gone"))
    _, registry = discover(bad, ep("scale", method("scale"), dist="peftkit-scale"))
    assert registry.by_name("scale").dist == "peftkit-scale"
    assert list(registry.broken) == ["scale"]


def test_registering_something_malformed_is_broken(discover: Any) -> None:
    class BadName:
        @peftkit.hookimpl
        def peftkit_register_methods(self, register: Any) -> None:
            register(Method(name="LoRA-2", peft_type="LORA2", config="x:Y"))

    _, registry = discover(
        ep("not-a-method", "not a Method"), FakeEntryPoint("bad-name", BadName()), ep("good", method("good"))
    )
    assert "TypeError: register() expects a peftkit.Method, got str" in registry.broken["not-a-method"]
    assert "ValueError: Method name 'LoRA-2' must be lower case" in registry.broken["bad-name"]
    assert list(registry.methods) == ["good"]


def test_plugin_implementing_an_unknown_hook_is_broken(discover: Any) -> None:
    class Typo:
        @peftkit.hookimpl
        def peftkit_register_method(self, register: Any) -> None:  # missing "s": would silently do nothing
            raise AssertionError("never called")

    pm, registry = discover(FakeEntryPoint("typo", Typo(), dist="peftkit-typo"))
    assert "implements peftkit_register_method, which peftkit does not define" in registry.broken["typo"]
    assert pm.get_plugin("typo") is None


def test_duplicate_method_names_raise_naming_both_distributions(discover: Any) -> None:
    _, registry = discover(
        ep("scale", method("scale"), version="1.0"),
        ep("scale-fork", method("scale"), dist="acme-scale", version="2.1"),
        ep("good", method("good")),
    )
    for lookup in (lambda: registry.by_name("scale"), lambda: registry.by_peft_type("SCALE")):
        with pytest.raises(DuplicateMethodError) as info:
            lookup()
        assert "peftkit-scale==1.0" in str(info.value)
        assert "acme-scale==2.1" in str(info.value)
    assert sorted(registry.methods) == ["good"]  # neither claimant silently wins; others unaffected


def test_duplicate_peft_types_under_different_names_raise_for_both(discover: Any) -> None:
    _, registry = discover(
        ep("scale", method("scale", "SCALE"), version="1.0"),
        ep("rescale", method("rescale", "SCALE"), dist="acme-rescale", version="3.0"),
    )
    for lookup in ("scale", "rescale"):
        with pytest.raises(DuplicateMethodError, match=r"peftkit-scale==1\.0 and acme-rescale==3\.0"):
            registry.by_name(lookup)
    with pytest.raises(DuplicateMethodError, match="PEFT type 'SCALE'"):
        registry.by_peft_type("SCALE")
    assert registry.methods == {}


def test_same_entry_point_name_in_two_distributions_is_a_conflict_not_a_silent_skip(discover: Any) -> None:
    pm, registry = discover(
        ep("scale", method("scale"), dist="peftkit-scale"), ep("scale", method("scale"), dist="other-scale")
    )
    with pytest.raises(DuplicateMethodError, match=r"peftkit-scale==1\.0 and other-scale==1\.0"):
        registry.by_name("scale")
    assert pm.get_plugin("scale (other-scale)") is not None


def test_a_third_claimant_is_named_too(discover: Any) -> None:
    _, registry = discover(
        ep("a", method("scale"), dist="dist-a"),
        ep("b", method("scale"), dist="dist-b"),
        ep("c", method("scale"), dist="dist-c"),
    )
    with pytest.raises(DuplicateMethodError) as info:
        registry.by_name("scale")
    assert all(f"dist-{x}==1.0" in str(info.value) for x in "abc")


def test_one_module_behind_two_entry_points_is_loaded_once(discover: Any) -> None:
    plugin = MethodsPlugin(method("scale"))
    _, registry = discover(
        FakeEntryPoint("scale", plugin, dist="peftkit-scale"),
        FakeEntryPoint("scale-alias", plugin, dist="peftkit-scale"),
    )
    assert registry.by_name("scale").dist == "peftkit-scale"
    assert registry.broken == {} and registry.conflicts == {}


@pytest.mark.parametrize(
    ("allow", "expected"),
    [(None, ["a", "b", "c"]), ("a,b", ["a", "b"]), (" c , nothing-else ", ["c"]), ("", [])],
)
def test_load_plugins_allow_list(
    monkeypatch: pytest.MonkeyPatch, allow: str | None, expected: list[str]
) -> None:
    if allow is None:
        monkeypatch.delenv(ALLOW_ENV, raising=False)
    else:
        monkeypatch.setenv(ALLOW_ENV, allow)
    pm = make_plugin_manager(entry_points=[ep(n, method(n)) for n in "abc"])
    registry = build_registry(pm)
    assert sorted(registry.methods) == expected
    # The built-in dense backend is not an entry point: it answers whatever the allow-list says.
    assert [b.name for b in registry.backends] == ["dense"]
    import torch

    view = pm.hook.peftkit_base_layer_view(module=torch.nn.Linear(3, 5), path="", model=None)
    assert (view.kind, view.in_features, view.out_features) == ("linear", 3, 5)


def test_unknown_method_errors_name_a_distribution_to_install(discover: Any) -> None:
    _, registry = discover(ep("good", method("good")))
    with pytest.raises(UnknownMethodError, match=r"pip install peftkit-miss") as info:
        registry.by_name("miss")
    assert "installed: good" in str(info.value)
    with pytest.raises(
        UnknownMethodError, match=r"peft_type 'PREFIX_TUNING'.*pip install peftkit-prefix-tuning"
    ):
        registry.by_peft_type("PREFIX_TUNING")


class BackendAndConverterPlugin:
    def __init__(self, converter_name: str = "fake-to-real") -> None:
        self.converter_name = converter_name

    @peftkit.hookimpl
    def peftkit_describe_backends(self) -> list[tuple[str, list[str]]]:
        return [("fake-quant", ["FakeLinear4bit"])]

    @peftkit.hookimpl
    def peftkit_register_converters(self, register: Any) -> None:
        register(self.converter_name, "no_such_module:convert", "turn fake checkpoints into real ones")


def test_backends_and_converters_carry_their_distribution(discover: Any) -> None:
    _, registry = discover(
        FakeEntryPoint("quant", BackendAndConverterPlugin(), dist="peftkit-quant", version="0.2")
    )
    assert [(b.name, list(b.layer_types), b.origin) for b in registry.backends] == [
        ("dense", registry.backends[0].layer_types, f"peftkit=={peftkit.__version__}"),
        ("fake-quant", ["FakeLinear4bit"], "peftkit-quant==0.2"),
    ]
    converter = registry.converter("fake-to-real")
    assert (converter.origin, converter.help) == (
        "peftkit-quant==0.2",
        "turn fake checkpoints into real ones",
    )
    with pytest.raises(UnknownMethodError, match="available: fake-to-real"):
        registry.converter("bone-to-miss")


def test_duplicate_converters_name_both_distributions(discover: Any) -> None:
    _, registry = discover(
        FakeEntryPoint("q1", BackendAndConverterPlugin(), dist="dist-one"),
        FakeEntryPoint("q2", BackendAndConverterPlugin(), dist="dist-two"),
    )
    with pytest.raises(DuplicateMethodError, match=r"dist-one==1\.0 and dist-two==1\.0"):
        registry.converter("fake-to-real")


class HqqLikeBackend:
    """A backend whose layer type shares no name with the dense ones: it declares the kind it serves."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer if answer is not None else [("hqq", {"HQQLinear": "linear"})]

    @peftkit.hookimpl
    def peftkit_describe_backends(self) -> Any:
        return self.answer


def kinds_methods() -> FakeEntryPoint:
    linear = Method("lin", "LIN", "x:Y", prefix="lin_", layer_types=("Linear", "Conv1D"))
    emb = Method("emb", "EMB", "x:Y", prefix="emb_", layer_types=("Embedding",))
    prompt = Method("prompt", "PROMPT", "x:Y")  # adapts no layer
    return ep("kinds", linear, emb, prompt)


def test_methods_meet_backends_by_view_kind_not_by_layer_name(discover: Any) -> None:
    from peftkit.cli import describe_plugins

    _, registry = discover(kinds_methods(), FakeEntryPoint("hqq", HqqLikeBackend(), dist="peftkit-hqq"))
    hqq = registry.backends[-1]
    assert (hqq.name, list(hqq.layer_types), hqq.kinds, hqq.view_kinds) == (
        "hqq",
        ["HQQLinear"],
        {"HQQLinear": "linear"},
        ("linear",),
    )
    served = {m["method"]: m["backends"] for m in describe_plugins(registry)["methods"]}
    assert served == {"lin": ["dense", "hqq"], "emb": ["dense"], "prompt": ["dense", "hqq"]}
    assert registry.by_name("lin").view_kinds == ("linear",)  # derived from layer_types


def test_a_backend_listing_only_layer_names_still_works_with_kinds_guessed(discover: Any) -> None:
    legacy = HqqLikeBackend([("old-quant", ["Linear4bit", "QuantConv"])])
    _, registry = discover(kinds_methods(), FakeEntryPoint("old", legacy))
    old = registry.backends[-1]
    assert (list(old.layer_types), old.kinds) == (["Linear4bit", "QuantConv"], {"Linear4bit": "linear"})
    assert "old" not in registry.broken


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([("bad", {"HQQLinear": "Linear"})], r"view kinds must be lower-case names"),
        ([("bad", "HQQLinear")], r"must be a dict \{layer type: view kind\}"),
        (["HQQLinear"], r"each entry must be \(backend name, \{layer type name: view kind\}\)"),
    ],
)
def test_a_malformed_backend_description_marks_the_plugin_broken(
    discover: Any, answer: Any, message: str
) -> None:
    _, registry = discover(FakeEntryPoint("bad", HqqLikeBackend(answer), dist="peftkit-bad"))
    assert [b.name for b in registry.backends] == ["dense"]
    assert re.search(message, registry.broken["bad"]) and "peftkit-bad==1.0" in registry.broken["bad"]


def test_a_method_declares_view_kinds_or_gets_them_from_its_layer_types() -> None:
    assert Method("m", "M", "x:Y", layer_types=("Conv1D", "Conv2d", "Linear")).view_kinds == (
        "linear",
        "conv",
    )
    assert Method("m", "M", "x:Y", layer_types=("MyLinear",), view_kinds=["linear"]).view_kinds == ("linear",)
    assert Method("m", "M", "x:Y").view_kinds == ()
    with pytest.raises(TypeError, match=r"method 'm': view kinds must be lower-case names.*got 'linear'"):
        Method("m", "M", "x:Y", view_kinds="linear")


@pytest.fixture
def forget_default_state() -> Any:
    """Tests that change the process-wide plugins rediscover them afterwards (after monkeypatch undoes env)."""
    _plugins.reset()
    yield
    _plugins.reset()


def test_reset_rediscovers_the_installed_plugins(
    monkeypatch: pytest.MonkeyPatch, forget_default_state: Any
) -> None:
    monkeypatch.setenv(ALLOW_ENV, "")
    assert peftkit.list_methods() == []
    _plugins.reset()
    monkeypatch.delenv(ALLOW_ENV)
    assert "lora" in [m["method"] for m in peftkit.list_methods()]


def test_import_and_list_methods_import_no_torch() -> None:
    code = "import peftkit, sys; names = [m['method'] for m in peftkit.list_methods()]; print('torch' in sys.modules, names)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1)[0] == "False"
    assert "'lora'" in out


# --- the method contract: hooks declared in hookspecs.MethodHooks, checked at registration -------
def _hook_forward(model: Any, *args: Any, **kwargs: Any) -> Any:
    return None


def _hook_prepare_wrong(config: Any) -> Any:  # forgets the model argument
    return config


class LateMethodPlugin:
    """Builds its Method inside the hook, as plugins do, so a malformed one makes the plugin broken."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    @peftkit.hookimpl
    def peftkit_register_methods(self, register: Any) -> None:
        register(Method(name="late", peft_type="LATE", config="no_such_module:Config", **self.fields))


def test_a_misspelled_hook_is_broken_naming_plugin_hook_and_the_hooks(discover: Any) -> None:
    _, registry = discover(
        FakeEntryPoint("typo", LateMethodPlugin(hooks={"forwrd": _hook_forward}), dist="peftkit-typo")
    )
    message = registry.broken["typo"]
    assert message.startswith("peftkit-typo==1.0: PluginContractError: method 'late'")
    assert "hooks key 'forwrd' is not a method hook (did you mean 'forward'?)" in message
    assert (
        "prepare_config, create_adapter, forward, generate, state_slots, convert_for_initial_model" in message
    )
    assert "late" not in registry.methods


def test_a_hook_with_the_wrong_signature_is_broken_with_the_expected_one(discover: Any) -> None:
    _, registry = discover(
        FakeEntryPoint("sig", LateMethodPlugin(hooks={"prepare_config": _hook_prepare_wrong}))
    )
    message = registry.broken["sig"]
    assert "hook 'prepare_config' is _hook_prepare_wrong(config: 'Any') -> 'Any'" in message
    assert "expected: prepare_config(model: 'PeftModel', config: 'PeftConfig') -> 'PeftConfig'" in message


def test_old_underscore_model_methods_are_refused_with_the_new_spelling(discover: Any) -> None:
    _, registry = discover(FakeEntryPoint("old", LateMethodPlugin(model_methods={"_forward": _hook_forward})))
    assert "model_methods key '_forward' is not a public method name" in registry.broken["old"]
    assert "use hooks={'forward': ...}" in registry.broken["old"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"prefix": 3}, "prefix must be a string"),
        ({"layer_types": "Linear"}, "layer_types must be a sequence of strings"),
        ({"default_targets": {"llama": "q_proj"}}, "default_targets must map a model_type"),
        ({"hooks": {"forward": 42}}, "hooks['forward'] must be a function or a 'module:attr' string"),
    ],
)
def test_malformed_method_fields_are_broken_naming_the_field(
    discover: Any, fields: dict[str, Any], expected: str
) -> None:
    _, registry = discover(FakeEntryPoint("bad", LateMethodPlugin(**fields)))
    assert expected in registry.broken["bad"]


def test_a_lazy_hook_with_the_wrong_signature_fails_on_first_use_and_in_list_methods_check(
    discover: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from peftkit.cli import main
    from peftkit.errors import PluginContractError

    lazy = Method(
        name="lazy",
        peft_type="LORA",
        config="peftkit_lora.config:LoraConfig",
        hooks={"prepare_config": f"{__name__}:_hook_prepare_wrong"},
    )
    _, registry = discover(ep("lazy", lazy))
    assert registry.broken == {}  # a lazy name is not imported at discovery
    with pytest.raises(PluginContractError, match=r"hook 'prepare_config' is _hook_prepare_wrong"):
        registry.by_name("lazy").hook("prepare_config")
    assert main(["list-methods", "--check", "--json"], registry=registry) == 1
    import json

    doc = json.loads(capsys.readouterr().out)
    assert [m["method"] for m in doc["methods"]] == []
    (entry,) = doc["broken"].items()
    assert entry[0] == "peftkit-lazy (method lazy)"
    assert "hook 'prepare_config'" in entry[1]


def test_installed_plugins_pass_list_methods_check(capsys: pytest.CaptureFixture[str]) -> None:
    from peftkit.cli import main

    assert main(["list-methods", "--check"]) == 0, capsys.readouterr().out


def test_every_user_facing_error_shares_the_peftkit_root() -> None:
    from peftkit import errors

    for name in errors.__all__:
        cls = getattr(peftkit, name)
        assert cls is getattr(errors, name) and issubclass(cls, peftkit.PeftkitError), name
    # PEFT code catching built-in types keeps working
    assert issubclass(peftkit.ConfigError, ValueError) and issubclass(
        peftkit.UnsupportedLayerError, TypeError
    )
    assert issubclass(peftkit.UnknownMethodError, KeyError)
