"""Plugins from a user's side: installed ones found through entry points, `--plugin` files and modules,
`BARDTERM_LOAD_PLUGINS`, the API version, and the example plugins in `plugins/` end to end.

Each test gets a plugin manager of its own (`fresh`), so it loads plugins from scratch and leaves the
process's plugins as they were. An "installed" plugin is a module plus a `.dist-info` folder with an
`entry_points.txt`, put on `sys.path` (`install`): exactly what pip leaves behind.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pluggy
import pytest

from bardterm import hookspecs, plugins, registry
from bardterm.cli import main
from bardterm.engine import generate
from bardterm.errors import BardtermError
from bardterm.registry import build, get_registry

EXAMPLES = {"grammar": "bardterm-grammar", "mirostat": "bardterm-mirostat"}  # entry-point name -> distribution

PLUGIN_SOURCE = """
import torch
from bardterm.decoders.base import Processor
from bardterm.hookspecs import hookimpl
{header}

class {cls}(Processor):
    name = "{decoder}"
    help = "Pushes token 0 up a little."

    def __call__(self, input_ids, scores):
        return scores + torch.nn.functional.one_hot(torch.tensor(0), scores.shape[-1])

@hookimpl
def register_decoders(register):
    register({cls})
"""


def plugin_source(decoder: str, header: str = "") -> str:
    return PLUGIN_SOURCE.format(decoder=decoder, cls=decoder.title().replace("_", ""), header=header)


@pytest.fixture
def fresh(monkeypatch):
    """A plugin manager of this test's own: `load_plugins()` runs from scratch, the process's stays as it was."""
    manager = pluggy.PluginManager("bardterm")
    manager.add_hookspecs(hookspecs)
    monkeypatch.setattr(plugins, "pm", manager)
    monkeypatch.setattr(registry, "pm", manager)
    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "load_failures", [])
    monkeypatch.setattr(plugins, "left_out", [])
    monkeypatch.delenv("BARDTERM_LOAD_PLUGINS", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables on one line per row
    return manager


@pytest.fixture
def install(tmp_path, monkeypatch):
    """`install(entry_name, source, version)`: a plugin as pip would leave it, found through its entry point."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules = []

    def install_plugin(entry_name: str, source: str, version: str = "1.2.3") -> str:
        module = f"bardterm_test_{entry_name}"
        (site / f"{module}.py").write_text(source)
        info = site / f"bardterm_test_{entry_name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: bardterm-test-{entry_name}\n"
                                       f"Version: {version}\n")
        (info / "entry_points.txt").write_text(f"[bardterm]\n{entry_name} = {module}\n")
        modules.append(module)
        importlib.invalidate_caches()
        return module

    yield install_plugin
    for module in modules:
        sys.modules.pop(module, None)


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def row(table: str, first_cell: str) -> str:
    """The line of a rich table whose first cell is `first_cell`."""
    found = [line for line in table.splitlines() if line.strip("│┃ ").startswith(first_cell + " ")]
    assert found, f"no row {first_cell!r} in:\n{table}"
    return found[0]


# --- The examples in plugins/, installed with pip -------------------------------------------------------------


@pytest.fixture(scope="module")
def examples_installed():
    missing = [dist for dist in EXAMPLES.values() if not _installed(dist)]
    if missing:
        pytest.fail(f"example plugins not installed ({', '.join(missing)}): "
                    "pip install -e plugins/grammar -e plugins/mirostat")


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_examples_are_found_through_their_entry_points(fresh, examples_installed):
    found = get_registry()
    assert found.problems == [] and plugins.load_failures == []
    assert (found.decoders["grammar"].kind, found.plugin_of["grammar"]) == ("processor", "grammar")
    assert (found.decoders["mirostat"].kind, found.plugin_of["mirostat"]) == ("selector", "mirostat")
    assert found.plugin_of["json"] == "grammar"
    for name, distribution in EXAMPLES.items():
        assert plugins.plugin_version(name) == importlib.metadata.version(distribution)


def test_bardterm_plugins_lists_versions_and_hooks(fresh, examples_installed, capsys):
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    grammar = row(out, "grammar")
    assert importlib.metadata.version("bardterm-grammar") in grammar
    assert "register_decoders, register_presets" in grammar and "grammar, json" in grammar
    assert "register_presets" not in row(out, "mirostat")


def test_bardterm_decoders_lists_the_examples_with_their_plugin(fresh, examples_installed, capsys):
    code, out, _ = run(capsys, "decoders")
    assert code == 0
    assert "processor" in row(out, "grammar") and "--json-schema" in row(out, "grammar")
    assert "selector" in row(out, "mirostat") and "--tau" in row(out, "mirostat")
    assert row(out, "json").rstrip(" │").endswith("grammar")


@pytest.mark.parametrize("flags, settings", [
    (["--decoder", "grammar", "--regex", "[a-z ]+"], {"decoder": "grammar", "regex": "[a-z ]+"}),
    (["--decoder", "json"], {"decoder": "json"}),
    (["--decoder", "mirostat", "--tau", "3", "--eta", "0.2"], {"decoder": "mirostat", "tau": 3.0, "eta": 0.2}),
    (["--tau", "4", "--top-k", "20"], {"decoder": "mirostat", "tau": 4.0, "top_k": 20}),
])
def test_bardterm_generate_with_an_example(fresh, examples_installed, capsys, tiny_checkpoint, tokenizer, gpt2,
                                           flags, settings):
    code, out, err = run(capsys, "generate", "ROMEO:", "--checkpoint", tiny_checkpoint, "--seed", 4,
                         "--max-new-tokens", 6, "--json", *flags)
    assert code == 0, err
    printed = json.loads(out)
    setup = build(**settings)
    assert printed["token_ids"] == generate(gpt2, tokenizer, "ROMEO:", setup, max_new_tokens=6, seed=4).token_ids
    assert printed["decoder"] == setup.describe()


# --- Installed plugins: discovery, BARDTERM_LOAD_PLUGINS, API version ------------------------------------------


def test_an_installed_plugin_is_found_with_its_entry_point_name_and_version(fresh, install):
    install("nudge", plugin_source("nudge_zero"), version="2.5.0")
    found = get_registry()
    assert found.plugin_of["nudge_zero"] == "nudge"
    assert plugins.plugin_version("nudge") == "2.5.0"
    setup = build("nudge_zero")
    assert (setup.chain[0].name, setup.chain[0].plugin) == ("nudge_zero", "nudge")  # for fault messages
    assert setup.selector.plugin == "bardterm.decoders.sample"


@pytest.mark.parametrize("chosen, loaded", [
    ("", set()),
    ("nudge", {"nudge"}),
    (" other , nudge ", {"nudge", "other"}),
])
def test_load_plugins_env_chooses_which_installed_plugins_load(fresh, install, monkeypatch, chosen, loaded):
    install("nudge", plugin_source("nudge_zero"))
    install("other", plugin_source("other_zero"))
    monkeypatch.setenv("BARDTERM_LOAD_PLUGINS", chosen)
    found = get_registry()
    assert {found.plugin_of.get(name) for name in ("nudge_zero", "other_zero")} - {None} == loaded
    assert set(EXAMPLES) & {fresh.get_name(p) for p in fresh.get_plugins()} == set()
    assert {"greedy", "sample", "top_p", "creative"} <= {*found.decoders, *found.presets}  # built-ins always load
    assert plugins.load_failures == []


def test_load_plugins_env_names_a_plugin_that_is_not_installed(fresh, install, monkeypatch):
    install("nudge", plugin_source("nudge_zero"))
    monkeypatch.setenv("BARDTERM_LOAD_PLUGINS", "nudge,nudj")
    assert "nudge_zero" in get_registry().decoders
    assert len(plugins.load_failures) == 1
    assert "BARDTERM_LOAD_PLUGINS names 'nudj', which is not installed" in plugins.load_failures[0]
    assert "nudge" in plugins.load_failures[0].split("installed:")[1]


def test_a_decoder_of_a_plugin_left_out_by_load_plugins_env_says_so(fresh, install, monkeypatch):
    install("nudge", plugin_source("nudge_zero"))
    monkeypatch.setenv("BARDTERM_LOAD_PLUGINS", "")
    with pytest.raises(BardtermError) as refused:
        build("nudge_zero")
    assert "unknown decoder 'nudge_zero'" in str(refused.value)
    left_out = str(refused.value).split("BARDTERM_LOAD_PLUGINS left out installed plugins ")[1]
    assert "nudge" in left_out.split(":")[0].split(", ")


def test_empty_load_plugins_env_in_a_fresh_process(examples_installed):
    listing = subprocess.run([sys.executable, "-m", "bardterm", "plugins"], capture_output=True, text=True,
                             env={**os.environ, "BARDTERM_LOAD_PLUGINS": "", "COLUMNS": "200"}, timeout=300)
    assert listing.returncode == 0, listing.stderr
    plugin_names = {line.strip("│ ").split(" ")[0] for line in listing.stdout.splitlines() if "│" in line}
    assert "bardterm.decoders.greedy" in plugin_names
    assert not plugin_names & set(EXAMPLES)


def test_a_plugin_for_another_api_version_is_refused_with_one_line(fresh, install, capsys):
    install("future", plugin_source("from_the_future", header="bardterm_api = 3"))
    install("nudge", plugin_source("nudge_zero"))
    found = get_registry()
    assert "from_the_future" not in found.decoders and not fresh.has_plugin("future")
    assert plugins.load_failures == [
        "plugin 'future' was written for bardterm plugin API 3, but this bardterm supports API 1 and 2: "
        "upgrade the plugin or bardterm"]
    assert "nudge_zero" in found.decoders  # the others load regardless
    code, _, err = run(capsys, "decoders")
    assert code == 0
    assert [line for line in err.splitlines() if "future" in line] == [f"bardterm: warning: {plugins.load_failures[0]}"]


@pytest.mark.parametrize("version", [1, 2])
def test_a_plugin_declaring_a_supported_api_version_loads(fresh, install, version):
    assert hookspecs.API_VERSION == 2
    install("current", plugin_source("current_zero", header=f"bardterm_api = {version}"))
    assert get_registry().plugin_of["current_zero"] == "current"


# --- --plugin FILE and --plugin MODULE -------------------------------------------------------------------------


def test_plugin_flag_loads_a_file_once(fresh, tmp_path):
    path = tmp_path / "nudger.py"
    path.write_text(plugin_source("nudge_file"))
    assert plugins.load_plugin(str(path)) == "nudger"
    assert plugins.load_plugin(str(path)) == "nudger"  # the same file again is the same plugin
    found = get_registry()
    assert found.plugin_of["nudge_file"] == "nudger" and found.problems == []
    assert plugins.plugin_version("nudger") == "local"


def test_plugin_flag_loads_a_module_by_name(fresh, tmp_path, monkeypatch):
    (tmp_path / "bardterm_test_by_name.py").write_text(plugin_source("nudge_module"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert plugins.load_plugin("bardterm_test_by_name") == "bardterm_test_by_name"
        assert get_registry().plugin_of["nudge_module"] == "bardterm_test_by_name"
    finally:
        sys.modules.pop("bardterm_test_by_name", None)


def test_plugin_flag_naming_an_installed_plugin_module_is_that_plugin(fresh, examples_installed):
    assert plugins.load_plugin("bardterm_grammar") == "grammar"
    assert get_registry().problems == []


def test_plugin_file_named_like_a_loaded_plugin_is_refused(fresh, examples_installed, tmp_path):
    path = tmp_path / "grammar.py"
    path.write_text(plugin_source("my_grammar"))
    with pytest.raises(BardtermError, match="a different plugin named 'grammar' is already loaded: rename the file"):
        plugins.load_plugin(str(path))


@pytest.mark.parametrize("spec, fragment", [
    ("no/such/plugin.py", "--plugin no/such/plugin.py: no such file"),
    ("bardterm_no_such_module", "failed to import: ModuleNotFoundError"),
])
def test_plugin_flag_that_finds_nothing(fresh, capsys, spec, fragment):
    code, _, err = run(capsys, "decoders", "--plugin", spec)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bardterm: error:")
    assert fragment in lines[0]


def test_plugin_file_for_another_api_version_is_refused(fresh, tmp_path, capsys):
    path = tmp_path / "old.py"
    path.write_text(plugin_source("old_zero", header="bardterm_api = 0"))
    code, _, err = run(capsys, "generate", "hi", "--plugin", path, "--decoder", "old_zero")
    assert code == 2
    assert err.strip() == ("bardterm: error: plugin 'old' was written for bardterm plugin API 0, but this "
                           "bardterm supports API 1 and 2: upgrade the plugin or bardterm")


def test_the_plugin_guide_example_works_as_written(fresh, tmp_path, tiny_checkpoint, capsys):
    guide = (Path(__file__).resolve().parent.parent / "plugins" / "README.md").read_text()
    source = guide.split("```python\n", 1)[1].split("```", 1)[0]  # the guide's first code block: a whole plugin
    path = tmp_path / "my_decoders.py"
    path.write_text(textwrap.dedent(source))
    code, out, err = run(capsys, "generate", "ROMEO:", "--plugin", path, "--checkpoint", tiny_checkpoint,
                         "--decoder", "top_a", "--top-a", "0.5", "--max-new-tokens", 5, "--seed", 1, "--json")
    assert code == 0, err
    assert len(json.loads(out)["token_ids"]) == 5


def test_the_plugin_guide_testing_example_runs_on_bardterm_testing_fixtures(tmp_path):
    """Section 10's test file, next to section 1's plugin, run by pytest in a directory of its own: the fixtures
    come from the `pytest11` entry point alone (no conftest.py)."""
    guide = (Path(__file__).resolve().parent.parent / "plugins" / "README.md").read_text()
    blocks = guide.split("```python\n")
    (tmp_path / "my_decoders.py").write_text(blocks[1].split("```", 1)[0])
    testing_section = guide.split("## 10. Testing a plugin", 1)[1]
    (tmp_path / "test_my_decoders.py").write_text(testing_section.split("```python\n", 1)[1].split("```", 1)[0])
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_decoders.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


# --- Faults while loading and registering: one line naming the plugin, every other decoder keeps working ---


def assert_warned_once(err: str, *fragments: str) -> None:
    warnings = [line for line in err.splitlines() if line.startswith("bardterm: warning:")]
    assert len(warnings) == 1, err
    assert all(fragment in warnings[0] for fragment in fragments), warnings[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("source, fault", [
    ("import bardterm_no_such_dependency\n", "ModuleNotFoundError: No module named 'bardterm_no_such_dependency'"),
    ("raise RuntimeError('needs a GPU')\n", "RuntimeError: needs a GPU"),
    ("def broken(:\n", "SyntaxError"),
])
def test_an_installed_plugin_that_fails_to_import(fresh, install, capsys, tiny_checkpoint, source, fault):
    install("broken", source)
    install("nudge", plugin_source("nudge_zero"))
    found = get_registry()
    assert len(plugins.load_failures) == 1
    assert plugins.load_failures[0].startswith(f"plugin 'broken' failed to load: {fault}")
    assert "nudge_zero" in found.decoders and not fresh.has_plugin("broken")
    code, out, err = run(capsys, "generate", "ROMEO:", "--checkpoint", tiny_checkpoint, "--decoder", "nudge_zero",
                         "--max-new-tokens", 3, "--json")
    assert code == 0 and len(json.loads(out)["token_ids"]) == 3
    assert_warned_once(err, "plugin 'broken' failed to load", fault)


RAISES_WHILE_REGISTERING = plugin_source("nudge_first") + """
class Later(Processor):
    name = "never_registered"

@hookimpl
def register_presets(register):
    register("nudge_preset", "Registered before the fault.", decoder="greedy", nudge_first={})
    raise RuntimeError("preset table missing")
""".replace("nudge_first={}", "")


def test_a_plugin_that_raises_inside_a_hook(fresh, install, capsys):
    install("grumpy", RAISES_WHILE_REGISTERING.replace("    register(NudgeFirst)\n",
                                                       "    register(NudgeFirst)\n    raise KeyError('oops')\n"))
    found = get_registry()
    assert found.problems == ["plugin 'grumpy' raised while registering: KeyError: 'oops'",
                              "plugin 'grumpy' raised while registering: RuntimeError: preset table missing"]
    assert found.plugin_of["nudge_first"] == "grumpy" and found.plugin_of["nudge_preset"] == "grumpy"  # before it
    assert "never_registered" not in found.decoders
    assert build("nucleus").chain[0].name == "top_p"
    code, _, err = run(capsys, "decoders")
    assert code == 0
    assert [line for line in err.splitlines() if "grumpy" in line] == [
        f"bardterm: warning: {problem}" for problem in found.problems]


@pytest.mark.parametrize("registers, fault", [
    ("register(Copycat)", "plugin 'copycat' tried to register decoder 'top_p', already registered by "
                          "'bardterm.decoders.top_p'"),
    ("register(Copycat); register(Copycat)", "plugin 'copycat' tried to register decoder 'top_p', already "
                                             "registered by 'bardterm.decoders.top_p'"),
    ("register(NamedLikeAPreset)", "plugin 'copycat' tried to register decoder 'nucleus', already registered by "
                                   "'bardterm.decoders.presets'"),
    ("register(object)", "plugin 'copycat' registered <class 'object'>, which is not a Processor or Selector "
                         "subclass"),
    ("register(Nameless)", "plugin 'copycat' registered Nameless without a valid name (letters, digits, _)"),
    ("register(BadDefault)", "plugin 'copycat' registered decoder 'bad_default' with a bad default (invalid "),
])
def test_a_plugin_that_registers_a_bad_decoder(fresh, install, registers, fault):
    install("copycat", f"""
from bardterm.decoders.base import Processor
from bardterm.hookspecs import hookimpl
from bardterm.params import Param

class Copycat(Processor):
    name = "top_p"

class NamedLikeAPreset(Processor):
    name = "nucleus"

class Nameless(Processor):
    name = "top p!"

class BadDefault(Processor):
    name = "bad_default"
    params = (Param("strength", float, 5.0, "Too strong by default.", min=0, max=1),)

@hookimpl
def register_decoders(register):
    {registers}
""")
    found = get_registry()
    assert len(found.problems) == 1 and found.problems[0].startswith(fault)
    assert found.plugin_of["top_p"] == "bardterm.decoders.top_p" and found.presets["nucleus"].plugin != "copycat"
    assert "bad_default" not in found.decoders and "copycat" not in found.plugin_of.values()


def test_a_plugin_that_registers_a_preset_name_already_taken(fresh, install):
    install("copycat", """
from bardterm.hookspecs import hookimpl

@hookimpl
def register_presets(register):
    register("creative", "Mine now.", decoder="greedy")
""")
    found = get_registry()
    assert found.problems == ["plugin 'copycat' tried to register preset 'creative', already registered by "
                              "'bardterm.decoders.presets'"]
    assert found.presets["creative"].decoder == "sample"


@pytest.mark.parametrize("hook, fault", [
    ("def register_decoder(register)", "plugin 'typo' implements 'register_decoder', which is not a bardterm hook "
                                       "(hooks: register_decoders, register_presets)"),
    ("def register_decoders(registrar)", "plugin 'typo' defines register_decoders(registrar), but the hook is "
                                         "register_decoders(register)"),
])
def test_a_plugin_with_a_misspelt_hook_is_refused(fresh, install, tmp_path, hook, fault):
    source = f"from bardterm.hookspecs import hookimpl\n\n@hookimpl\n{hook}:\n    pass\n"
    install("typo", source)
    get_registry()
    assert plugins.load_failures == [fault] and not fresh.has_plugin("typo")
    (tmp_path / "typo.py").write_text(source)
    with pytest.raises(BardtermError) as refusal:
        plugins.load_plugin(str(tmp_path / "typo.py"))
    assert str(refusal.value) == fault
