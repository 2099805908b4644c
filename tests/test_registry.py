"""The plug-in registry: registration, lookup errors, parameters, entry-point discovery."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from bench.registry import BACKBONES, DATASETS, METHODS, BenchError, Registry, param


@dataclass
class _Params:
    ratio: float = param(2.0, "a ratio", low=0.0, low_exclusive=True, high=16.0)
    mode: str = param("a", "a mode", choices=("a", "b"))
    steps: int = param(3, "steps", low=1)


def test_register_lookup_and_declared_params():
    registry = Registry("methods")

    @registry.register("thing", "does a thing", params=_Params)
    class Thing:
        pass

    entry = registry.get("thing")
    assert entry.obj is Thing and entry.description == "does a thing"
    infos = {p.name: p for p in entry.params}
    assert infos["ratio"].type is float and infos["ratio"].default == 2.0
    assert (infos["ratio"].low, infos["ratio"].high, infos["ratio"].low_exclusive) == (0.0, 16.0, True)
    assert infos["mode"].choices == ("a", "b")
    assert "ratio: float = 2.0 in (0.0, 16.0]" in infos["ratio"].describe()


def test_params_are_coerced_and_validated():
    registry = Registry("methods")
    registry.register("thing", "x", params=_Params)(object)
    entry = registry.get("thing")
    assert entry.make_params({"ratio": "4", "steps": "5"}) == _Params(4.0, "a", 5)
    for bad, message in [({"ratio": "0"}, "must be > 0.0"), ({"ratio": "17"}, "<= 16.0"),
                         ({"mode": "c"}, "must be one of"), ({"steps": "x"}, "not a valid int"),
                         ({"nope": 1}, "has no parameter 'nope'")]:
        with pytest.raises(BenchError, match=message):
            entry.make_params(bad)


def test_unknown_name_suggests_and_lists_valid_names():
    registry = Registry("methods")
    registry.register("baseline", "x")(object)
    registry.register("hrf", "y")(object)
    with pytest.raises(BenchError) as info:
        registry.get("basline")
    message = str(info.value)
    assert "unknown method 'basline'" in message and "Did you mean 'baseline'" in message
    assert "Available: baseline, hrf" in message and "\n" not in message


def test_collision_is_an_error_but_reimport_is_not():
    registry = Registry("backbones")
    registry.register("x", "first")(int)
    registry.register("x", "first")(int)  # same object again (module re-import) is fine
    with pytest.raises(BenchError, match="already registered"):
        registry.register("x", "second")(str)


def test_third_party_plugin_discovered_through_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "my_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hrf_bench.methods]\nexternal = my_plugin_entry\n")
    (tmp_path / "my_plugin_entry.py").write_text(
        "from bench.registry import METHODS\nMETHODS.register('external-test', 'from a third-party package')(object)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(METHODS, "_plugins_loaded", False)
    try:
        assert "external-test" in METHODS.names()
        assert METHODS.get("external-test").description == "from a third-party package"
    finally:
        METHODS._entries.pop("external-test", None)
        sys.modules.pop("my_plugin_entry", None)


def test_builtin_registries_are_populated():
    assert "baseline" in METHODS.names()
    assert "convtransformer" in BACKBONES.names()
    assert "embedded" in DATASETS.names()
    assert set(BACKBONES.get("convtransformer").extra["presets"]) >= {"tiny", "lightweight", "large"}


def test_a_broken_plugin_package_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[hrf_bench.datasets]\nbroken = broken_plugin_entry\n")
    (tmp_path / "broken_plugin_entry.py").write_text("import a_module_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(DATASETS, "_plugins_loaded", False)
    with pytest.raises(BenchError) as info:
        DATASETS.get("embedded")
    message = str(info.value)
    assert message.startswith("plug-in 'broken' (broken_plugin_entry, group hrf_bench.datasets) failed to load")
    assert "a_module_that_is_not_installed" in message and "fix or uninstall" in message and "\n" not in message
    sys.modules.pop("broken_plugin_entry", None)


def test_the_plain_reference_and_default_presets_are_declared_on_the_method_not_named(monkeypatch):
    from bench.execution.grid import make_grid
    from bench.method import Method, plain_reference
    from bench.registry import Entry

    assert plain_reference() == "baseline"
    grid = make_grid({"methods": ["baseline", "hrf", "hrf+quant"]})
    assert [grid.presets_for(m) for m in grid.methods] == [["lightweight", "large"], ["lightweight"], ["lightweight"]]

    class Wide(Method):
        default_presets = ("tiny", "medium")

    monkeypatch.setitem(METHODS._entries, "wide", Entry("wide", Wide, "deploys at two budgets by default"))
    assert make_grid({"methods": ["wide"]}).presets_for("wide") == ["tiny", "medium"]

    class Rival(Method):
        plain_reference = True

    monkeypatch.setitem(METHODS._entries, "rival", Entry("rival", Rival, "a second plain reference"))
    with pytest.raises(BenchError, match="exactly one registered method must declare plain_reference.*baseline, rival"):
        plain_reference()
