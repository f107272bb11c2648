"""The app with a chat model: its own template, a system prompt, /set framing, the settings file, resuming a
conversation's model and framing, and a Hub download with its progress bar (against tests/hub_server.py)."""

from __future__ import annotations

import json

import pytest

import bardterm.engine
from bardterm import config
from bardterm.tui.app import BardtermApp, Options
from bardterm.tui.store import Store
from test_chat_format import CHATML, NO_SYSTEM, chat_tokenizer
from test_tui_app import messages, ready, reply, submit, wait_for


def save_chat_model(folder, template, specials, eos: str | None = None):
    from conftest import make_gpt2

    tokenizer = chat_tokenizer(template, specials)
    model = make_gpt2(tokenizer, n_positions=256)
    if eos:
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(eos)]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat") / "tiny-chat"
    return folder, save_chat_model(folder, CHATML, ["<|im_start|>", "<|im_end|>"], eos="<|im_end|>")


@pytest.fixture(scope="module")
def no_system_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nosys") / "tiny-gemma"
    save_chat_model(folder, NO_SYSTEM, ["<start_of_turn>", "<end_of_turn>"])
    return folder


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("BARDTERM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BARDTERM_CONFIG", str(tmp_path / "config.toml"))
    return tmp_path


@pytest.fixture
def sent(monkeypatch):
    """Every generation's prompt (text or ids) and end-of-turn ids, as the engine received them."""
    calls = []
    original = bardterm.engine.Generation.__init__

    def recording(self, model, tokenizer, prompt, setup, **kwargs):
        calls.append((prompt, set(kwargs.get("stop_token_ids", ()))))
        original(self, model, tokenizer, prompt, setup, **kwargs)

    monkeypatch.setattr(bardterm.engine.Generation, "__init__", recording)
    return calls


def app_for(checkpoint, **options):
    return BardtermApp(Options(**{"checkpoint": str(checkpoint), "seed": 7, "max_new_tokens": 8, **options}))


def status(app) -> str:
    return str(app.query_one("#model-status").render())


async def test_chat_template_framing_with_a_system_prompt(env, chat_checkpoint, sent):
    folder, tokenizer = chat_checkpoint
    app = app_for(folder, system="Answer briefly.")
    async with app.run_test(size=(120, 32)) as pilot:
        await ready(pilot)
        assert "chat template" in status(app)
        assert "Answer briefly." in str(app.query_one(".system-prompt").render())  # at the top of the chat
        await reply(pilot, "Hello there")
        prompt, stop_ids = sent[-1]
        assert prompt == tokenizer.apply_chat_template(
            [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there"}],
            add_generation_prompt=True, tokenize=True, return_dict=False)
        assert stop_ids == {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        reply_text = app.session.turns[-1].text
        assert "<|im_end|>" not in reply_text and "<|im_start|>" not in reply_text

        await submit(pilot, "/system Speak in verse.")
        assert "Speak in verse." in str(app.query_one(".system-prompt").render())
        await reply(pilot, "Again")
        assert tokenizer.decode(sent[-1][0]).startswith("<|im_start|>system\nSpeak in verse.")

        await submit(pilot, "/set framing script")
        assert "play script" in status(app)
        await reply(pilot, "Plainly")
        assert isinstance(sent[-1][0], str) and sent[-1][0].startswith("Speak in verse.\n\nROMEO:\nHello there")

        await submit(pilot, "/export json " + str(env / "out.json"))
        exported = json.loads((env / "out.json").read_text())
        assert exported["system"] == "Speak in verse." and exported["framing"] == "script"

        await pilot.press("f4")  # compare frames the message as the chat does
        screen = app.screen
        screen.query_one("#compare-prompt").value = "Once more"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not screen.generating)
        assert all(isinstance(p, str) and p.endswith("ROMEO:\nOnce more\n\nJULIET:\n") for p, _ in sent[-3:])


async def test_a_template_without_system_role_says_so_in_one_line(env, no_system_checkpoint):
    app = app_for(no_system_checkpoint, system="Be kind.")
    async with app.run_test(size=(120, 32)) as pilot:
        await ready(pilot)
        assert "chat template" in status(app)
        await wait_for(pilot, lambda: any("no system role" in m for m in messages(app)), timeout=30)
        before = len(messages(app))
        await submit(pilot, "/system Be brief.")
        said = [m for m in messages(app)[before:] if "system" in m]
        assert len(said) == 1 and "no system role" in said[0] and "\n" not in said[0], messages(app)
        assert app.session.system == "Be kind."  # kept (for a model that can take it), shown as not sent
        assert "not sent" in str(app.query_one(".system-prompt").render())


async def test_resume_restores_checkpoint_framing_and_system(env, chat_checkpoint, tiny_checkpoint):
    folder, tokenizer = chat_checkpoint
    app = app_for(folder, system="Answer briefly.")
    async with app.run_test(size=(120, 32)) as pilot:
        await ready(pilot)
        await reply(pilot, "Hello there")
    store = Store()
    [conversation] = store.conversations()
    store.close()
    assert (conversation.checkpoint, conversation.framing, conversation.system) == (
        str(folder), "template", "Answer briefly.")

    app = BardtermApp(Options(resume=True))  # no model named, no system prompt: resuming brings them back
    async with app.run_test(size=(120, 32)) as pilot:
        await wait_for(pilot, lambda: app.host.loaded is not None and app.host.loaded.path == folder)
        await pilot.pause()
        assert app.session.frame.kind == "template" and app.session.system == "Answer briefly."
        assert "chat template" in status(app)
        assert "Answer briefly." in str(app.query_one(".system-prompt").render())
        await app.workers.wait_for_complete()

    app = app_for(tiny_checkpoint)  # from the picker (Ctrl+O), mid-session: its model is loaded again
    async with app.run_test(size=(120, 32)) as pilot:
        await ready(pilot)
        assert app.session.frame.kind == "script"
        app.chat.resume(conversation.id)
        await wait_for(pilot, lambda: app.host.loaded is not None and app.host.loaded.path == folder)
        await pilot.pause()
        assert "chat template" in status(app) and app.session.system == "Answer briefly."


async def test_save_defaults_then_the_next_start_uses_them(env, chat_checkpoint):
    folder, _ = chat_checkpoint
    app = app_for(folder)
    async with app.run_test(size=(120, 32)) as pilot:
        await ready(pilot)
        await submit(pilot, "/decoder nucleus")
        await submit(pilot, "/set temperature 0.7")
        await submit(pilot, "/system You are terse.")
        await submit(pilot, "/set max_new_tokens 12")
        await submit(pilot, "/save-defaults")
        assert any("saved as the settings for tiny-chat" in m for m in messages(app))
    saved = config.load().models["tiny-chat"]
    assert saved["system"] == "You are terse." and saved["decoder"] == "nucleus"
    assert saved["params"] == {"temperature": 0.7} and saved["max_new_tokens"] == 12

    from bardterm.cli import build_parser
    from bardterm.tui import run

    started = {}
    parser = build_parser()
    args = parser.parse_args(["--checkpoint", str(folder)])
    import bardterm.tui.app

    def capture(self):
        started["options"] = self.options
    original = bardterm.tui.app.BardtermApp.run
    bardterm.tui.app.BardtermApp.run = capture
    try:
        run(args)
    finally:
        bardterm.tui.app.BardtermApp.run = original
    options = started["options"]
    assert (options.system, options.decoder, options.max_new_tokens) == ("You are terse.", "nucleus", 12)
    assert options.decoder_params == {"temperature": 0.7}
    app = BardtermApp(options)
    async with app.run_test(size=(120, 32)) as pilot:
        await ready(pilot)
        assert app.host.choice.describe(app.host.registry).startswith("temperature=0.7")
        assert app.session.system == "You are terse."


async def test_a_models_section_applies_on_a_later_load_under_the_command_line(env, chat_checkpoint, tiny_checkpoint,
                                                                              monkeypatch):
    folder, _ = chat_checkpoint
    (env / "config.toml").write_text(
        '[models."tiny-chat"]\ndecoder = "nucleus"\nsystem = "You are terse."\nmax_new_tokens = 5\n'
        '[models."tiny-chat".params]\ntemperature = 0.7\n')
    from bardterm.cli import build_parser
    from bardterm.tui import run

    started = {}
    monkeypatch.setattr(BardtermApp, "run", lambda self: started.setdefault("options", self.options))
    run(build_parser().parse_args(["--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "9"]))
    options = started["options"]
    assert (options.system, options.max_new_tokens) == ("", 9)  # the first model has no section
    app = BardtermApp(options)
    async with app.run_test(size=(120, 32)) as pilot:
        await ready(pilot)
        assert app.session.system == "" and app.host.choice.label != "nucleus"
        await submit(pilot, f"/load {folder}")
        await wait_for(pilot, lambda: app.host.loaded is not None and app.host.loaded.path == folder)
        await pilot.pause()
        assert any(m.startswith("settings for tiny-chat from") for m in messages(app)), messages(app)
        assert app.session.system == "You are terse."  # the section, where the command line said nothing
        assert "You are terse." in str(app.query_one(".system-prompt").render())
        assert app.host.choice.label == "nucleus"
        assert app.host.choice.describe(app.host.registry).startswith("temperature=0.7")
        assert app.host.max_new_tokens == 9  # the command line wins over the section's 5
        await app.workers.wait_for_complete()


async def test_a_broken_settings_file_is_one_notification_and_built_ins(env, tiny_checkpoint):
    (env / "config.toml").write_text("[defaults]\nmax_new_tokens = 0\n")
    from bardterm.cli import build_parser
    from bardterm.tui import run
    import bardterm.tui.app

    started = {}
    original = bardterm.tui.app.BardtermApp.run
    bardterm.tui.app.BardtermApp.run = lambda self: started.setdefault("options", self.options)
    try:
        run(build_parser().parse_args(["--checkpoint", str(tiny_checkpoint)]))
    finally:
        bardterm.tui.app.BardtermApp.run = original
    options = started["options"]
    assert options.max_new_tokens == 200
    app = BardtermApp(options)
    async with app.run_test(size=(120, 32)) as pilot:
        await ready(pilot)
        [note] = [m for m in messages(app) if "config.toml" in m]
        assert "max_new_tokens = 0" in note and "an integer >= 1" in note and "built-in defaults" in note


async def test_load_by_hub_id_shows_download_progress(env, monkeypatch, chat_checkpoint):
    from huggingface_hub import constants

    from hub_server import HubServer

    folder, _ = chat_checkpoint
    monkeypatch.setenv("HF_HOME", str(env / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    shown = []
    original = BardtermApp._show_download
    monkeypatch.setattr(BardtermApp, "_show_download", lambda self, event: (shown.append(event),
                                                                            original(self, event)))
    with HubServer() as server:
        server.add_repo("tiny-org/tiny-chat", folder)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        app = app_for("tiny-org/tiny-chat")
        async with app.run_test(size=(120, 32)) as pilot:
            await ready(pilot)
            await pilot.pause()
            assert shown and shown[-1].done == shown[-1].total
            assert not app.query_one("#download").display  # the bar goes once the download is done
            assert status(app).startswith("tiny-org/tiny-chat · cpu") and "chat template" in status(app)
            assert app.session.checkpoint == "tiny-org/tiny-chat"
