"""The TUI's parts that need no terminal: the conversation store, exports, the chat frame, the decoder
choice that the panel and /set edit, command completion."""

from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace

import pytest

from bardterm.errors import BardtermError
from bardterm.params import InvalidParameter
from bardterm.registry import build, get_registry
from bardterm.tui import commands
from bardterm.tui.chat import ChatFrame
from bardterm.tui.decoder_panel import parse_seed
from bardterm.tui.settings import DecoderChoice
from bardterm.tui.store import Store, Turn, data_dir, to_json, to_markdown, write_atomic
from bardterm.tui.streaming import styled


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "c.sqlite3")
    yield store
    store.close()


def test_data_dir_follows_bardterm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BARDTERM_HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home"
    assert Store().path == tmp_path / "home" / "conversations.sqlite3"


def test_each_turn_is_committed_when_added(store, tmp_path):
    conversation = store.new_conversation("ck", "ROMEO", "JULIET")
    store.add_turn(conversation, Turn("user", "Hello"))
    store.add_turn(conversation, Turn("model", "Hi th", partial=True, decoder="greedy", stats={"tokens": 3}))
    # a second connection (another process) sees both turns without any close or flush
    other = sqlite3.connect(tmp_path / "c.sqlite3")
    assert other.execute("SELECT speaker, text, partial FROM turns ORDER BY id").fetchall() == [
        ("user", "Hello", 0), ("model", "Hi th", 1)]
    loaded = store.load(conversation)
    assert [(t.speaker, t.text, t.partial, t.stats) for t in loaded.turns] == [
        ("user", "Hello", False, {}), ("model", "Hi th", True, {"tokens": 3})]


def test_conversations_newest_first_and_empty_ones_hidden(store):
    first = store.new_conversation("ck", "A", "B")
    store.add_turn(first, Turn("user", "one"))
    store.new_conversation("ck", "A", "B")  # never used
    second = store.new_conversation("ck", "A", "B")
    store.add_turn(second, Turn("user", "two"))
    assert [c.id for c in store.conversations()] == [second, first]
    assert store.latest().id == second
    store.add_turn(first, Turn("model", "again"))
    assert store.latest().id == first


def test_delete_turn_and_title(store):
    conversation = store.new_conversation("ck", "A", "B")
    store.add_turn(conversation, Turn("user", "hi"))
    reply = store.add_turn(conversation, Turn("model", "yo"))
    store.delete_turn(reply)
    store.set_title(conversation, "My play")
    loaded = store.load(conversation)
    assert [t.text for t in loaded.turns] == ["hi"] and loaded.label() == "My play"


def test_unknown_conversation_and_unusable_store_are_one_line_errors(store, tmp_path):
    with pytest.raises(BardtermError, match="no conversation 99"):
        store.load(99)
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(BardtermError, match="BARDTERM_HOME"):
        Store(corrupt)


def test_exports(store):
    conversation = store.new_conversation("ck", "ROMEO", "JULIET")
    store.add_turn(conversation, Turn("user", "Speak"))
    store.add_turn(conversation, Turn("model", "I will", partial=True))
    loaded = store.load(conversation)
    markdown = to_markdown(loaded)
    assert markdown.startswith("# Speak\n")
    assert "**ROMEO**:\n\nSpeak" in markdown and "**JULIET** (stopped):\n\nI will" in markdown
    data = json.loads(to_json(loaded))
    assert [(t["name"], t["text"], t["partial"]) for t in data["turns"]] == [
        ("ROMEO", "Speak", False), ("JULIET", "I will", True)]


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out" / "x.md"
    write_atomic(target, "first")
    write_atomic(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["x.md"]
    (tmp_path / "file").write_text("")
    with pytest.raises(BardtermError, match="choose another path"):
        write_atomic(tmp_path / "file" / "child.md", "no")


def test_chat_frame_prompt_and_stop():
    frame = ChatFrame("ROMEO", "JULIET")
    turns = [Turn("user", "Hello "), Turn("model", "Good morrow")]
    assert frame.prompt(turns) == "ROMEO:\nHello\n\nJULIET:\nGood morrow\n\nJULIET:\n"
    assert frame.stop() == ["\n\n", "\nROMEO:"]
    custom = ChatFrame("Q", "A", template="[{name}] {text}\n")
    assert custom.prompt([Turn("user", "hi")]) == "[Q] hi\n[A] "
    assert custom.stop() == ["\n", "\n[Q]"]
    assert ChatFrame(template="{name}: {text}").stop() == ["\nROMEO:"]


@pytest.mark.parametrize("template", ["{text}", "{text} {name}", "{name}: {text} {other}", "{name} {text} {"])
def test_bad_template_refused(template):
    with pytest.raises(BardtermError, match="invalid template"):
        ChatFrame(template=template)


def test_bad_speaker_name_refused():
    with pytest.raises(BardtermError, match="speaker name"):
        ChatFrame("two\nlines", "B")


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def test_choice_from_preset_expands_like_build(registry):
    choice = DecoderChoice.from_name(registry, "creative", seed=4)
    assert choice.selector == "sample" and choice.seed == 4
    assert choice.chain == ["repetition_penalty", "temperature", "top_k", "top_p"]
    assert choice.values["top_p"] == {"top_p": 0.95}
    assert choice.setup(registry).describe() == build("creative", registry=registry).describe()


def test_choice_set_validates_and_joins_chain(registry):
    choice = DecoderChoice.from_name(registry, "greedy")
    assert choice.chain == ["repetition_penalty"]  # greedy's default penalty
    assert choice.set(registry, "top_k", "5") == "top_k"
    choice.set(registry, "temperature", "0.5")
    assert choice.chain == ["repetition_penalty", "temperature", "top_k"]  # each at its default place
    assert choice.setup(registry).chain[2].top_k == 5
    with pytest.raises(InvalidParameter, match="top_k=-1"):
        choice.set(registry, "top_k", "-1")
    with pytest.raises(InvalidParameter, match="unknown setting"):
        choice.set(registry, "nonsense", "1")
    with pytest.raises(InvalidParameter, match="/decoder beam"):
        choice.set(registry, "num_beams", "3")
    assert choice.values["top_k"] == {"top_k": 5}


def test_choice_reorder_and_remove(registry):
    choice = DecoderChoice.from_name(registry, "creative")
    choice.move("top_p", -1)
    assert choice.chain == ["repetition_penalty", "temperature", "top_p", "top_k"]
    choice.move("repetition_penalty", -1)  # already first: stays
    assert choice.chain[0] == "repetition_penalty"
    choice.remove("temperature")
    assert [p.name for p in choice.setup(registry).chain] == ["repetition_penalty", "top_p", "top_k"]


def test_parse_seed():
    assert parse_seed("") is None and parse_seed("random") is None and parse_seed("42") == 42
    for bad in ("-1", "1.5", "abc"):
        with pytest.raises(BardtermError, match="invalid seed"):
            parse_seed(bad)


def test_completions(registry):
    app = SimpleNamespace(registry=registry, available_themes={"textual-dark": 1, "nord": 2})
    assert commands.completions("/de", app) == ["/decoder "]
    assert "/decoder nucleus" in commands.completions("/decoder nu", app)
    assert commands.completions("/set top_", app) == ["/set top_k", "/set top_p"]
    assert commands.completions("/export j", app) == ["/export json"]
    assert commands.completions("/compare greedy nuc", app) == ["/compare greedy nucleus"]
    assert commands.completions("/theme n", app) == ["/theme nord"]
    assert commands.completions("/zzz", app) == []


def test_styled_dims_the_tail_and_neutralises_control_characters():
    text = styled("safe\x1b[31mred", 4)
    assert text.plain == "safe\\x1b[31mred"
    assert [(span.start, span.style) for span in text.spans] == [(4, "dim")]


def test_importing_the_tui_entry_point_is_cheap():
    """`bardterm --help` imports bardterm.tui: it must not pull in textual, torch or transformers."""
    import subprocess
    import sys

    code = "import sys, bardterm.tui; print(sorted(m for m in ('textual', 'torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_cli_options_reach_the_app(monkeypatch, tmp_path):
    from bardterm.cli import build_parser
    from bardterm.tui import app as app_module
    from bardterm.tui import run

    launched = []
    monkeypatch.setattr(app_module.BardtermApp, "run", lambda self: launched.append(self.options))
    args = build_parser().parse_args(["--checkpoint", str(tmp_path), "--continue", "--decoder", "greedy", "--seed",
                                      "9", "--user-name", "HAMLET", "--template", "{name}: {text}\\n",
                                      "--max-new-tokens", "50"])
    assert run(args) == 0
    [options] = launched
    assert (options.checkpoint, options.resume, options.decoder, options.seed, options.user_name,
            options.template, options.max_new_tokens) == (str(tmp_path), True, "greedy", 9, "HAMLET",
                                                          "{name}: {text}\n", 50)


@pytest.mark.parametrize("argv, message", [
    (["--template", "{text} only"], "invalid template"),
    (["--plugin", "no_such_plugin_module_xyz"], "--plugin no_such_plugin_module_xyz"),
])
def test_bad_cli_options_are_one_line_errors(argv, message, capsys):
    from bardterm.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
