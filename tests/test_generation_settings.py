"""Generation settings are declared once (bardterm/generation.py): `generate`, `bardterm`, `/set` in the app,
the settings file and the engine refuse a bad max_new_tokens with the same line."""

from __future__ import annotations

import pytest

from bardterm.errors import BardtermError

SAME = "invalid max_new_tokens=0: must be an integer >= 1"


def test_every_place_refuses_max_new_tokens_with_the_same_line(capsys, tmp_path, monkeypatch, gpt2, tokenizer):
    from types import SimpleNamespace

    from bardterm.cli import main
    from bardterm.engine import Generation
    from bardterm.registry import build
    from bardterm.tui.commands import set_setting

    assert main(["generate", "hi", "--checkpoint", str(tmp_path / "absent"), "--max-new-tokens", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"bardterm: error: {SAME}"

    monkeypatch.setattr("bardterm.tui.app.BardtermApp.run", lambda self: pytest.fail("the app must not start"))
    assert main(["--checkpoint", str(tmp_path / "absent"), "--max-new-tokens", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"bardterm: error: {SAME}"

    host = SimpleNamespace(max_new_tokens=5)
    with pytest.raises(BardtermError, match=f"^{SAME}$"):
        set_setting(SimpleNamespace(host=host, session=None), "max_new_tokens", "0")
    assert host.max_new_tokens == 5

    with pytest.raises(BardtermError, match=f"^{SAME}$"):
        Generation(gpt2, tokenizer, "hi", build("greedy"), max_new_tokens=0)

    settings = tmp_path / "config.toml"
    settings.write_text("[defaults]\nmax_new_tokens = 0\n")
    monkeypatch.setenv("BARDTERM_CONFIG", str(settings))
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens" in err and "an integer >= 1" in err  # the file's line names it, from the same declaration
