"""The plugin manager: discovery through real entry points, errors, name resolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dpx
from dpx.plugins import FIRST_PARTY, AmbiguousComponentError, PluginError, Plugins, UnknownComponentError
from dpx.cli import main
from dpx.testing import assert_light_import


def make_distribution(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Write modules and a dist-info folder, as `pip install` would, under ``root``."""
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[dpx]\n{lines}\n")
    return root


GOOD = """
import dpx

@dpx.hookimpl
def dpx_environments():
    return {"pend.simple": dpx.Component("pend_impl:Pendulum", "a pendulum")}
"""

IMPL = """
import dpx

class Pendulum(dpx.Environment):
    def step(self):
        self.set_training_data(input=[1.0], ground_truth=[2.0])
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path where tests install fake distributions."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for variable in ("DPX_STRICT_PLUGINS", "DPX_DISABLE_PLUGINS", "DPX_PLUGINS"):
        monkeypatch.delenv(variable, raising=False)
    before = set(sys.modules)
    yield tmp_path
    for module in set(sys.modules) - before:  # the next test writes same-named modules
        del sys.modules[module]


def test_builtins_are_listed_like_plugins():
    plugins = Plugins(entry_points=False)
    assert plugins.plugins["dpx"].source == "builtin"
    assert (plugins.plugins["dpx"].distribution, plugins.plugins["dpx"].version) == ("dpx-core", dpx.__version__)
    assert "inprocess" in plugins.names("runners")
    assert plugins.load("runners", "inprocess").__name__ == "InProcessRunner"


def test_entry_point_is_discovered_with_its_distribution(site):
    make_distribution(site, "dpx-pend", {"pend": "pend_plugin"}, {"pend_plugin": GOOD, "pend_impl": IMPL})
    plugins = Plugins()
    info = plugins.plugins["pend"]
    assert (info.status, info.distribution, info.version) == ("ok", "dpx-pend", "1.2.3")
    assert "pend_impl" not in sys.modules, "listing a plugin must not import its components"
    cls = plugins.load("environments", "pend.simple")
    assert issubclass(cls, dpx.Environment) and cls.__name__ == "Pendulum"


def test_entry_point_to_missing_module_is_an_error_row(site):
    make_distribution(site, "dpx-ghost", {"ghost": "no_such_module_xyz"}, {})
    make_distribution(site, "dpx-pend", {"pend": "pend_plugin"}, {"pend_plugin": GOOD, "pend_impl": IMPL})
    plugins = Plugins()
    ghost = plugins.plugins["ghost"]
    assert ghost.status == "error" and "no_such_module_xyz" in ghost.error
    assert "pend.simple" in plugins.names("environments"), "a broken plugin must not hide the others"


def test_plugin_raising_at_import_is_an_error_row_and_strict_mode_raises(site, monkeypatch):
    make_distribution(site, "dpx-boom", {"boom": "boom_plugin"}, {"boom_plugin": "raise RuntimeError('no licence')"})
    plugins = Plugins()
    assert plugins.plugins["boom"].status == "error"
    assert "RuntimeError: no licence" in plugins.plugins["boom"].error
    monkeypatch.setenv("DPX_STRICT_PLUGINS", "1")
    monkeypatch.setenv("DPX_PLUGINS", "")
    with pytest.raises(PluginError, match="boom.*no licence"):
        Plugins(disabled=[name for name in Plugins(strict=False).plugins if name != "boom"])


def test_unavailable_plugin_is_listed_without_failing_strict_mode(site):
    source = "import dpx\n@dpx.hookimpl\ndef dpx_environments():\n    raise dpx.PluginUnavailable('FooSim is not installed')\n"
    make_distribution(site, "dpx-foo", {"foo": "foo_plugin"}, {"foo_plugin": source})
    others = [name for name in Plugins(strict=False).plugins if name != "foo"]
    info = Plugins(strict=True, disabled=others).plugins["foo"]
    assert (info.status, info.error) == ("unavailable", "FooSim is not installed")
    result = run_cli("plugins", pythonpath=site)
    row = next(line for line in result.stdout.splitlines() if line.startswith("foo"))
    assert "unavailable: FooSim is not installed" in row and "foo" not in result.stderr


def test_misspelled_hook_is_reported_with_the_right_name():
    module = type(sys)("typo_plugin")
    exec("import dpx\n@dpx.hookimpl\ndef dpx_enviroments():\n    return {}\n", module.__dict__)
    plugins = Plugins(entry_points=False, strict=False)
    info = plugins.register(module, name="typo")
    assert info.status == "error"
    assert "dpx_enviroments" in info.error and "dpx_environments" in info.error
    assert plugins.manager.get_plugin("typo") is None, "a rejected plugin must not stay registered"


def test_hook_with_unknown_argument_is_reported():
    module = type(sys)("args_plugin")
    exec("import dpx\n@dpx.hookimpl\ndef dpx_environments(config):\n    return {}\n", module.__dict__)
    info = Plugins(entry_points=False, strict=False).register(module, name="args")
    assert info.status == "error" and "config" in info.error


def test_registry_returning_garbage_is_reported():
    module = type(sys)("garbage_plugin")
    exec("import dpx\n@dpx.hookimpl\ndef dpx_environments():\n    return {'x.y': 'not a path'}\n", module.__dict__)
    info = Plugins(entry_points=False, strict=False).register(module, name="garbage")
    assert info.status == "error" and "package.module:Attribute" in info.error


def test_same_name_from_two_plugins_names_both(site):
    other = GOOD.replace("pend_impl:Pendulum", "pend_impl2:Pendulum")
    make_distribution(site, "dpx-pend", {"pend": "pend_plugin"}, {"pend_plugin": GOOD, "pend_impl": IMPL})
    make_distribution(site, "dpx-pend2", {"pend2": "pend_plugin2"}, {"pend_plugin2": other, "pend_impl2": IMPL})
    plugins = Plugins()
    with pytest.raises(AmbiguousComponentError) as raised:
        plugins.load("environments", "pend.simple")
    message = str(raised.value)
    assert "'pend'" in message and "'pend2'" in message and "'pend2:pend.simple'" in message
    assert plugins.component("environments", "pend2:pend.simple")[1].path == "pend_impl2:Pendulum"


def test_unknown_name_lists_available_and_closest(site):
    make_distribution(site, "dpx-pend", {"pend": "pend_plugin"}, {"pend_plugin": GOOD, "pend_impl": IMPL})
    with pytest.raises(UnknownComponentError, match=r"unknown environment 'pend.simpel' \(did you mean 'pend.simple'\?\); available: .*pend.simple"):
        Plugins().load("environments", "pend.simpel")
    with pytest.raises(ValueError, match="unknown registry"):
        Plugins().names("simulators")


def test_disable_and_dev_modules(site, monkeypatch):
    make_distribution(site, "dpx-pend", {"pend": "pend_plugin"}, {"pend_plugin": GOOD, "pend_impl": IMPL})
    (site / "dev_plugin.py").write_text(GOOD.replace("pend.simple", "dev.simple"))
    monkeypatch.setenv("DPX_DISABLE_PLUGINS", "pend")
    monkeypatch.setenv("DPX_PLUGINS", "dev_plugin")
    plugins = Plugins()
    assert plugins.plugins["pend"].status == "disabled"
    names = plugins.names("environments")
    assert "dev.simple" in names and "pend.simple" not in names
    assert plugins.plugins["dev_plugin"].source == "DPX_PLUGINS"


def test_component_that_fails_to_import_names_plugin_and_path(site):
    make_distribution(site, "dpx-pend", {"pend": "pend_plugin"}, {"pend_plugin": GOOD.replace("pend_impl", "gone")})
    with pytest.raises(PluginError, match=r"'pend.simple' of plugin 'pend' could not be loaded from 'gone:Pendulum'"):
        Plugins().load("environments", "pend.simple")


def run_cli(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for variable in ("DPX_STRICT_PLUGINS", "DPX_DISABLE_PLUGINS", "DPX_PLUGINS"):
        env.pop(variable, None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "dpx", *args], capture_output=True, text=True, env=env, check=False)


def test_cli_lists_broken_plugin_as_error_row(site):
    make_distribution(site, "dpx-boom", {"boom": "boom_plugin"}, {"boom_plugin": "import torchh"})
    make_distribution(site, "dpx-pend", {"pend": "pend_plugin"}, {"pend_plugin": GOOD, "pend_impl": IMPL})
    result = run_cli("plugins", pythonpath=site)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    boom = next(line for line in lines if line.startswith("boom"))
    assert "error: import failed: ModuleNotFoundError" in boom
    pend = next(line for line in lines if line.startswith("pend"))
    assert "dpx-pend 1.2.3" in pend and "ok" in pend and "environments: pend.simple" in pend
    rows = {row["name"]: row for row in json.loads(run_cli("plugins", "--json", pythonpath=site).stdout)}
    assert rows["boom"]["status"] == "error"
    assert rows["pend"]["provides"]["environments"]["pend.simple"]["path"] == "pend_impl:Pendulum"
    assert "pend_impl:Pendulum" in run_cli("plugins", "--verbose", pythonpath=site).stdout


def test_listing_plugins_imports_no_heavy_library():
    code = "import sys; from dpx.cli import main; main(['plugins']); print(sorted(m for m in ('torch','vedo','ray','tensorboard','vtk') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_import_dpx_is_light():
    assert_light_import("dpx", heavy=["numpy", "torch"])


def test_fixture_registers_for_one_test(dpx_plugin):
    module = type(sys)("fixture_plugin")
    exec(GOOD.replace("pend.simple", "fixture.env"), module.__dict__)
    dpx_plugin(module, name="fixture")
    assert "fixture.env" in dpx.plugins.get_plugins().names("environments")


def test_fixture_unregistered_after_the_test():
    assert "fixture.env" not in dpx.plugins.get_plugins().names("environments")


def test_missing_first_party_plugin_says_what_to_install():
    core_alone = Plugins(entry_points=False)
    with pytest.raises(UnknownComponentError, match=r"unknown network backend 'torch'; available: none\. "
                       r"Network backend 'torch' comes with the dpx-torch plugin: pip install dpx-torch\.$"):
        core_alone.load("network_backends", "torch")
    with pytest.raises(UnknownComponentError, match=r"'toy\.spring' comes with the dpx-toy plugin: pip install dpx-toy"):
        core_alone.load("environments", "toy.spring")
    with pytest.raises(UnknownComponentError) as raised:
        core_alone.load("environments", "mine.spring")
    assert "pip install" not in str(raised.value), "only first-party names have a known distribution"


def test_plugins_command_with_the_core_alone_says_how_to_get_plugins(monkeypatch, capsys):
    monkeypatch.setattr(dpx.plugins, "_plugins", Plugins(entry_points=False))
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "No plugin is installed" in out and "pip install dpx-toy dpx-torch" in out
    assert all(plugin.distribution in out for plugin in FIRST_PARTY)


def test_plugins_command_gives_no_install_hint_once_a_plugin_is_installed(site, monkeypatch, capsys):
    make_distribution(site, "dpx-pend", {"pend": "pend_plugin"}, {"pend_plugin": GOOD, "pend_impl": IMPL})
    monkeypatch.setattr(dpx.plugins, "_plugins", Plugins())
    assert main(["plugins"]) == 0
    assert "No plugin is installed" not in capsys.readouterr().out


def test_first_party_catalogue_matches_what_the_installed_plugins_offer():
    plugins = Plugins(strict=False)
    checked = []
    for entry in FIRST_PARTY:
        info = plugins.plugins.get(entry.plugin)
        if info is None or info.status != "ok":
            continue
        assert info.distribution == entry.distribution
        offered = {(registry, name) for registry, names in info.provides.items() for name in names}
        assert all(entry.offers_name(registry, name) for registry, name in offered), (entry.plugin, offered)
        for registry, patterns in entry.offers.items():
            for pattern in patterns:
                assert any(r == registry and entry.offers_name(r, name) for r, name in offered), (entry.plugin, pattern)
        checked.append(entry.plugin)
    assert {"toy", "torch"} <= set(checked), checked


def test_unknown_name_while_plugins_are_disabled_says_so(site, monkeypatch):
    make_distribution(site, "dpx-pend", {"pend": "pend_plugin"}, {"pend_plugin": GOOD, "pend_impl": IMPL})
    monkeypatch.setenv("DPX_DISABLE_PLUGINS", "pend")
    with pytest.raises(UnknownComponentError, match=r"Disabled by DPX_DISABLE_PLUGINS: pend\."):
        Plugins().load("environments", "pend.simple")


def test_disabling_a_name_that_matches_no_plugin_warns(site, monkeypatch, caplog):
    make_distribution(site, "dpx-pend", {"pend": "pend_plugin"}, {"pend_plugin": GOOD, "pend_impl": IMPL})
    monkeypatch.setenv("DPX_DISABLE_PLUGINS", "pendd,dpx-pend,dpx")
    with caplog.at_level("WARNING", logger="dpx.plugins"):
        plugins = Plugins()
    assert plugins.plugins["pend"].status == "ok"
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    assert "'pendd', which disables nothing: no installed plugin has that name (did you mean 'pend'?)" in warnings
    assert "'dpx-pend', which disables nothing: that is a distribution; its plugin is named 'pend'" in warnings
    assert "'dpx', which disables nothing: the core's own providers cannot be disabled" in warnings
    caplog.clear()
    with caplog.at_level("WARNING", logger="dpx.plugins"):
        Plugins(disabled=["pend"])
    assert not caplog.records


BROKEN_COMPONENTS = """
import dpx

class NoHistogram:
    def __init__(self, stats_dir):
        pass
    def scalar(self, tag, value, step):
        pass
    def close(self):
        pass

def plain_loss(prediction, target):
    return ((prediction - target) ** 2).mean()

class NotAnEnvironment:
    def step(self):
        pass

class HalfStorage:
    def __init__(self, path, *, readonly=True, max_file_bytes=1):
        pass
    def count(self, mode):
        return 0

@dpx.hookimpl
def dpx_stats_writers():
    return {"nohist": "broken_plugin:NoHistogram"}

@dpx.hookimpl
def dpx_losses():
    return {"plain": "broken_plugin:plain_loss"}

@dpx.hookimpl
def dpx_environments():
    return {"broken.env": "broken_plugin:NotAnEnvironment", "pend.simple": "pend_impl:Pendulum"}

@dpx.hookimpl
def dpx_storage_backends():
    return {"half": "broken_plugin:HalfStorage"}
"""


@pytest.mark.parametrize("registry, name, breach", [
    ("stats_writers", "nohist", "has no method histogram; a stats writer must be a class built as cls(stats_dir)"),
    ("losses", "plain", "is a function, not a class; a loss must be a class built as cls(**loss_kwargs)"),
    ("environments", "broken.env", "is not a subclass of dpx.core.environment.Environment"),
    ("storage_backends", "half", "has no method layout, add_mode, append, commit, read, reader, refresh, close"),
])
def test_component_breaking_its_contract_is_one_line_naming_plugin_and_what_is_missing(site, registry, name, breach):
    (site / "broken_plugin.py").write_text(BROKEN_COMPONENTS)
    (site / "pend_impl.py").write_text(textwrap.dedent(IMPL))
    plugins = Plugins(entry_points=False, dev_modules=["broken_plugin"])
    with pytest.raises(PluginError) as raised:
        plugins.load(registry, name)
    message = str(raised.value)
    assert f"{name!r} of plugin 'broken_plugin' (broken_plugin:" in message and breach in message, message
    assert "\n" not in message and f"dpx_{registry}" in message


def test_cli_reports_a_storage_breaking_its_contract_as_one_error_line(site, tmp_path):
    (site / "broken_plugin.py").write_text(BROKEN_COMPONENTS)
    (site / "pend_impl.py").write_text(textwrap.dedent(IMPL))
    config = tmp_path / "job.toml"
    config.write_text('[environment]\nenvironment_class = "pend.simple"\n[database]\nstorage = "half"\n'
                      f'[pipeline]\nsession_dir = "{tmp_path / "sessions"}"\nbatch_nb = 1\nbatch_size = 2\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "DPX_PLUGINS": "broken_plugin"}
    result = subprocess.run([sys.executable, "-m", "dpx", "generate", str(config), "--no-progress"],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("dpx generate: error: "), result.stderr
    assert "storage backend 'half' of plugin 'broken_plugin'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
