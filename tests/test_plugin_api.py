"""Plugin API 2: parameters that belong to their decoder, the one public import, the interface module.

Two test plugins declare the same parameter (`cutoff`), and a third declares `top_k` on a selector, as
contrastive search does, clashing with the built-in top_k processor. They are registered for one test each
with `register_plugin` (from `bardterm.testing`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from bardterm.cli import main
from bardterm.params import InvalidParameter
from bardterm.registry import build
from bardterm.testing import plugin_module

REPO = Path(__file__).resolve().parent.parent

CUT = """
from bardterm import Param, Processor, hookimpl


class Cut(Processor):
    name = "{name}"
    help = "Rules nothing out; it only declares a parameter another plugin declares too."
    params = (Param("cutoff", float, 0.5, "A threshold.", min=0, max=1),)

    def __call__(self, input_ids, scores):
        return scores


@hookimpl
def register_decoders(register):
    register(Cut)
"""

PICKY = """
from bardterm import Param, Selector, hookimpl


class Picky(Selector):
    name = "picky"
    help = "The most likely of the top_k tokens: a selector with contrastive search's parameter name."
    params = (Param("top_k", int, 4, "How many candidates.", min=1),)

    def choose(self, scores, generator, input_ids):
        return scores.argmax(dim=-1)


@hookimpl
def register_decoders(register):
    register(Picky)


@hookimpl
def register_presets(register):
    register("picky_two", "Picky with two candidates.", decoder="picky", top_k=2)
"""


@pytest.fixture
def clashing(register_plugin):
    register_plugin(plugin_module("cut_a_plugin", CUT.format(name="cut_a")), "cut_a_plugin")
    register_plugin(plugin_module("cut_b_plugin", CUT.format(name="cut_b")), "cut_b_plugin")
    return register_plugin(plugin_module("picky_plugin", PICKY), "picky_plugin")


def values(setup) -> dict:
    return {decoder.name: decoder.settings() for decoder in setup.decoders()}


# --- Whose parameter: qualified, bare, ambiguous ---------------------------------------------------------------


def test_a_bare_name_goes_to_the_one_decoder_in_the_setup_that_declares_it(clashing):
    assert values(build("cut_a", registry=clashing, cutoff=0.1))["cut_a"] == {"cutoff": 0.1}
    assert values(build("sample", chain="cut_b,top_p", registry=clashing, cutoff=0.2))["cut_b"] == {"cutoff": 0.2}


def test_a_qualified_name_always_works(clashing):
    setup = build("sample", registry=clashing, **{"cut_a.cutoff": 0.1, "cut_b.cutoff": 0.2})
    assert [p.name for p in setup.chain] == ["cut_a", "cut_b"]
    assert (setup.chain[0].cutoff, setup.chain[1].cutoff) == (0.1, 0.2)


@pytest.mark.parametrize("decoder, chain", [("sample", None), ("creative", None), ("sample", "cut_a,cut_b")])
def test_an_ambiguous_bare_name_is_refused_with_the_qualified_choices(clashing, decoder, chain):
    with pytest.raises(InvalidParameter) as refused:
        build(decoder, chain=chain, registry=clashing, cutoff=0.1)
    message = str(refused.value)
    assert "\n" not in message
    assert message == ("parameter 'cutoff' could be that of cut_a or cut_b: say cut_a.cutoff or cut_b.cutoff "
                       "(on the command line --cut_a.cutoff or --cut_b.cutoff)")


def test_a_clash_with_a_built_in_breaks_no_setup_that_does_not_use_both(clashing):
    assert build("creative", registry=clashing).describe() == build("creative").describe()
    focused = build("focused", registry=clashing)  # its bare top_k=40 is the top_k processor's
    assert focused.selector.name == "sample" and values(focused)["top_k"] == {"top_k": 40}
    assert values(build("sample", registry=clashing, top_k=5))["top_k"] == {"top_k": 5}
    assert values(build(registry=clashing, top_k=5))["top_k"] == {"top_k": 5}  # the default decoder, not picky


def test_a_selector_in_the_setup_takes_its_bare_name(clashing):
    setup = build("picky", registry=clashing, top_k=3)
    assert setup.selector.top_k == 3 and setup.chain == []
    both = build("picky", registry=clashing, **{"picky.top_k": 3, "top_k.top_k": 9})
    assert both.selector.top_k == 3 and values(both)["top_k"] == {"top_k": 9}
    assert build(registry=clashing, **{"picky.top_k": 3}).selector.name == "picky"  # a qualified name implies it


def test_a_preset_may_use_bare_names(clashing):
    setup = build("picky_two", registry=clashing)
    assert setup.selector.name == "picky" and setup.selector.top_k == 2 and setup.chain == []
    assert build("picky_two", registry=clashing, top_k=3).selector.top_k == 3  # the caller's value wins


def test_a_clash_is_reported_once_at_load_time_naming_both_plugins(clashing, capsys):
    cutoff = [line for line in clashing.clashes if "'cutoff'" in line]
    assert cutoff == ["parameter 'cutoff' is declared by decoders 'cut_a' (plugin 'cut_a_plugin') and 'cut_b' "
                      "(plugin 'cut_b_plugin'): a bare cutoff goes to the one in the setup; where two are, say "
                      "cut_a.cutoff or cut_b.cutoff"]
    top_k = [line for line in clashing.clashes if "'top_k'" in line]
    assert len(top_k) == 1 and "(built-in)" in top_k[0] and "plugin 'picky_plugin'" in top_k[0]
    assert main(["decoders"]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "'cutoff'" in line] == [f"bardterm: warning: {cutoff[0]}"]


def test_built_ins_alone_report_no_clash():
    from bardterm.registry import get_registry

    assert not [line for line in get_registry().clashes if "plugin 'bardterm." in line]


# --- The same from the command line and the TUI ----------------------------------------------------------------


def generate(capsys, checkpoint, *argv):
    code = main(["generate", "ROMEO:", "--checkpoint", str(checkpoint), "--max-new-tokens", "3", "--seed", "1",
                 "--json", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flags, decoder", [
    ([], "repetition_penalty=1.1 → temperature=0.9 → top_k=50 → top_p=0.95 → sample"),
    (["--decoder", "focused"], "temperature=0.7 → top_k=40 → sample"),
    (["--decoder", "cut_a", "--cutoff", "0.1"], "cut_a(cutoff=0.1) → sample"),
    (["--cut_b.cutoff", "0.2"], "repetition_penalty=1.1 → temperature=0.9 → top_k=50 → top_p=0.95 → "
                                "cut_b(cutoff=0.2) → sample"),
    (["--decoder", "picky", "--top-k", "3"], "picky(top_k=3)"),
    (["--decoder", "picky", "--top-k.top-k", "7", "--picky.top-k", "2"], "top_k=7 → picky(top_k=2)"),
])
def test_decoder_flags_bare_and_qualified(clashing, capsys, tiny_checkpoint, flags, decoder):
    import json

    code, out, err = generate(capsys, tiny_checkpoint, *flags)
    assert code == 0, err
    assert json.loads(out)["decoder"] == decoder


@pytest.mark.parametrize("flags, fragment", [
    (["--cutoff", "0.1"], "say cut_a.cutoff or cut_b.cutoff (on the command line --cut_a.cutoff or --cut_b.cutoff)"),
    (["--decoder", "cut_a", "--chain", "top_k", "--cut-b.cutoff", "0.1"], "cutoff belongs to processor 'cut_b'"),
    (["--cut", "0.1"], "unrecognised argument '--cut'"),  # no abbreviations: a prefix picks nobody's parameter
    (["--cut-a-cutoff", "0.1"], "unrecognised argument"),
])
def test_ambiguous_or_abbreviated_flags_are_refused_with_one_line(clashing, capsys, tiny_checkpoint, flags, fragment):
    code, out, err = generate(capsys, tiny_checkpoint, *flags)
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and out == "" and len(errors) == 1 and fragment in errors[0], err


def test_generate_help_lists_the_decoder_flags(clashing, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--max-new-tokens" in out and "decoder flags" in out
    for flag in ("--top-p", "--temperature", "--num-beams", "--cutoff", "--cut_a.cutoff", "--picky.top-k"):
        assert flag in out, flag


def test_the_tui_resolves_a_setting_as_build_does(clashing):
    from bardterm.tui.settings import DecoderChoice

    choice = DecoderChoice.from_name(clashing, "picky")
    assert choice.set(clashing, "top_k", "3") == "picky"
    assert choice.setup(clashing).selector.top_k == 3
    choice = DecoderChoice.from_name(clashing, "creative")
    assert choice.set(clashing, "top_k", "7") == "top_k"
    with pytest.raises(InvalidParameter, match="cut_a.cutoff or cut_b.cutoff"):
        choice.set(clashing, "cutoff", "0.1")
    assert choice.set(clashing, "cut_b.cutoff", "0.1") == "cut_b"


def test_build_takes_a_chain_as_a_string_or_a_list():
    assert [p.name for p in build("sample", chain="top_p, temperature", top_p=0.9).chain] == ["top_p", "temperature"]
    assert build("sample", chain="").chain == []
    assert build("sample", chain=["top_k"]).chain[0].name == "top_k"


# --- One import for plugin authors, and an interface that imports no engine ------------------------------------


def test_the_plugin_api_is_one_import_that_loads_no_torch():
    code = ("import sys\n"
            "from bardterm import API_VERSION, Cache, Decoder, DecoderSetup, Hypothesis, Param, Processor, Run, "
            "Selector, Step, hookimpl\n"
            "assert API_VERSION == 2\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "import bardterm.engine\n"
            "print(sorted(m for m in ('pluggy', 'bardterm.registry', 'bardterm.plugins') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['pluggy']"  # pluggy for hookimpl; the engine brought no registry with it


def module_imports(path: Path) -> set[str]:
    """The modules a file imports when it is imported (not under `if TYPE_CHECKING:`, nor inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:  # the top level: imports inside functions wait for a call
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_interface_imports_neither_the_engine_nor_pluggy_nor_torch():
    imports = module_imports(REPO / "bardterm" / "interface.py")
    assert imports <= {"__future__", "inspect", "dataclasses", "typing", "bardterm.params"}, imports


@pytest.mark.parametrize("module, never", [
    ("engine", {"bardterm.registry", "bardterm.plugins", "pluggy", "bardterm.decoders.base"}),
    ("registry", {"bardterm.engine", "bardterm.decoders.base"}),
    ("decoders/base", {"bardterm.engine", "bardterm.registry"}),
])
def test_no_import_circle_between_engine_registry_and_decoders(module, never):
    assert not module_imports(REPO / "bardterm" / f"{module}.py") & never
