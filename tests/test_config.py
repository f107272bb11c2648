"""The settings file: precedence (command line > the model's section > [defaults] > built-in), one-line errors
that name the file and the key, `bardterm config`, and writing a model's section."""

from __future__ import annotations

import json

import pytest

from bardterm import config
from bardterm.cli import main

GOOD = '''
[defaults]
decoder = "greedy"
max_new_tokens = 3
system = "You are terse."

[defaults.params]
repetition_penalty = 1.1

[models."tiny"]
max_new_tokens = 2
user_name = "HAMLET"

[models."owner/name".params]
top_p = 0.5
'''


@pytest.fixture
def settings_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("BARDTERM_CONFIG", str(path))
    return path


def test_precedence_command_line_model_defaults_built_in(settings_file):
    from bardterm.registry import DEFAULT_DECODER

    assert config.DECLARED["decoder"].default == DEFAULT_DECODER  # one default, named in two places
    settings_file.write_text(GOOD)
    loaded = config.load()
    assert loaded.path == settings_file
    plain = loaded.effective(("elsewhere",))
    assert plain["decoder"] == ("greedy", "defaults") and plain["max_new_tokens"] == (3, "defaults")
    assert plain["model_name"] == ("JULIET", "built-in") and plain["params.repetition_penalty"][0] == 1.1
    model = loaded.effective(config.model_names("/runs/tiny"))  # matched by the directory's name
    assert model["max_new_tokens"] == (2, 'models."tiny"') and model["user_name"] == ("HAMLET", 'models."tiny"')
    assert model["system"] == ("You are terse.", "defaults")
    given = loaded.effective(config.model_names("/runs/tiny"), given={"max_new_tokens": 9, "decoder": None})
    assert given["max_new_tokens"] == (9, "command line") and given["decoder"] == ("greedy", "defaults")
    hub = loaded.settings(config.model_names("owner/name@v2"))  # a Hub id, whatever the revision
    assert hub["params"] == {"repetition_penalty": 1.1, "top_p": 0.5}


@pytest.mark.parametrize("text, fragments", [
    ("[defaults]\nmax_new_tokens = 0\n", ["[defaults] max_new_tokens = 0", "an integer >= 1"]),
    ("[defaults]\nmax_new_tokens = \"many\"\n", ["max_new_tokens = 'many'", "an integer >= 1"]),
    ("[defaults]\nframing = \"chatml\"\n", ["framing = 'chatml'", "one of auto, template, script"]),
    ("[defaults]\ntemprature = 0.5\n", ["unknown key 'temprature'", "decoder, max_new_tokens"]),
    ("[model.x]\ndecoder = \"greedy\"\n", ["unknown section [model]"]),
    ("[defaults\n", ["not valid TOML"]),
    ('[models."a/b"]\nsystem = 3\n', ['[models."a/b"] system = 3', "text"]),
])
def test_an_error_is_one_line_naming_file_key_and_what_is_allowed(settings_file, text, fragments):
    settings_file.write_text(text)
    with pytest.raises(config.ConfigError) as error:
        config.load()
    message = str(error.value)
    assert "\n" not in message and str(settings_file) in message
    for fragment in fragments:
        assert fragment in message


def test_bardterm_config_shows_the_file_and_the_settings_in_force(settings_file, capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert f"settings file: {settings_file} (not written yet" in out and "built-in" in out
    settings_file.write_text(GOOD)
    assert main(["config", "--checkpoint", "checkpoints/tiny"]) == 0
    out = capsys.readouterr().out
    assert "HAMLET" in out and 'models."tiny"' in out and "params.repetition_penalty" in out
    settings_file.write_text("[defaults]\nmax_new_tokens = -1\n")
    assert main(["config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(settings_file) in err[0] and "max_new_tokens" in err[0]


def test_generate_takes_its_defaults_from_the_file(settings_file, capsys, tiny_checkpoint):
    settings_file.write_text(GOOD)
    code = main(["generate", "ROMEO:", "--checkpoint", str(tiny_checkpoint), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and len(data["token_ids"]) == 2  # [models."tiny"] over [defaults]
    assert data["decoder"] == "repetition_penalty=1.1 → greedy"
    code = main(["generate", "ROMEO:", "--checkpoint", str(tiny_checkpoint), "--json", "--max-new-tokens", "4",
                 "--decoder", "sample", "--seed", "1"])
    data = json.loads(capsys.readouterr().out)
    assert len(data["token_ids"]) == 4 and data["decoder"].endswith("sample")


def test_generate_with_a_broken_file_warns_once_and_uses_built_ins(settings_file, capsys, tiny_checkpoint):
    settings_file.write_text("[defaults]\nmax_new_tokens = 0\n")
    code = main(["generate", "ROMEO:", "--checkpoint", str(tiny_checkpoint), "--json", "--decoder", "greedy"])
    out, err = capsys.readouterr()
    assert code == 0 and len(json.loads(out)["token_ids"]) > 3  # the built-in 200, cut to the tiny context
    warnings = [line for line in err.splitlines() if str(settings_file) in line]
    assert len(warnings) == 1 and warnings[0].startswith("bardterm: warning:") and "built-in defaults" in warnings[0]


def test_an_unknown_decoder_parameter_in_the_file_is_named_and_left_out(settings_file, capsys, tiny_checkpoint):
    settings_file.write_text("[defaults.params]\ntop_q = 0.5\n")
    code = main(["generate", "ROMEO:", "--checkpoint", str(tiny_checkpoint), "--json", "--decoder", "greedy",
                 "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and len(json.loads(out)["token_ids"]) == 2
    assert str(settings_file) in err and "top_q" in err


def test_saving_a_model_section_keeps_the_rest(settings_file):
    settings_file.write_text(GOOD)
    tricky = 'Say "hi"\\ then\nstop.'
    config.save_model_settings("HuggingFaceTB/SmolLM2-135M-Instruct",
                               {"system": tricky, "decoder": "nucleus", "params": {"temperature": 0.7}})
    loaded = config.load()
    assert loaded.models["HuggingFaceTB/SmolLM2-135M-Instruct"] == {
        "system": tricky, "decoder": "nucleus", "params": {"temperature": 0.7}}
    assert loaded.models["tiny"] == {"max_new_tokens": 2, "user_name": "HAMLET"}
    assert loaded.defaults["params"] == {"repetition_penalty": 1.1}
    settings_file.write_text("[defaults]\nmax_new_tokens = 0\n")
    with pytest.raises(config.ConfigError):
        config.save_model_settings("x", {"system": "y"})  # a broken file is not overwritten
    assert settings_file.read_text() == "[defaults]\nmax_new_tokens = 0\n"
