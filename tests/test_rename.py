"""Speaker renaming: which words are names, consistent invented names per epoch, seeded, and wired into training."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from conftest import tiny_train_args, train_plain_and_with

from bardterm.training.rename import SpeakerRenamer, speaker_names

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny_shakespeare" / "input.txt"

PLAY = """KING RICHARD III:
Now is the winter of our discontent, good Buckingham.

BUCKINGHAM:
My lord? Long live the king! Where is Prospero?

PROSPERO:
Here, Buckingham; all is well.

ALL:
All hail, King Richard!

GREEN:
The green fields, my lord.
"""


@pytest.fixture(scope="module")
def text() -> str:
    if not CORPUS.is_file():
        pytest.skip(f"tiny_shakespeare test copy not found at {CORPUS}")
    return CORPUS.read_text()[:60_000]


def test_names_are_the_capital_words_of_speaker_tags_that_are_not_also_words():
    # KING, ALL and GREEN are also words in lower case ("the king", "all is well", "green fields"), III is a
    # numeral; the rest are names.
    assert speaker_names(PLAY) == ["BUCKINGHAM", "PROSPERO", "RICHARD"]


def test_every_name_renamed_consistently_in_capitals_and_in_dialogue():
    renamer = SpeakerRenamer(PLAY, 1.0)
    out = renamer.rename(PLAY, seed=3)
    for name in ("BUCKINGHAM", "PROSPERO", "RICHARD", "Buckingham", "Prospero", "Richard"):
        assert not re.search(rf"\b{name}\b", out), name
    new_prospero = out.split("\n\n")[2].splitlines()[0].rstrip(":")
    assert new_prospero.isupper() and f"Where is {new_prospero.capitalize()}?" in out
    # Words and titles stay as they were, and so does everything that is not a name.
    assert "ALL:\nAll hail, King " in out and "GREEN:\nThe green fields" in out
    assert re.sub(r"[A-Za-z]+", "W", out) == re.sub(r"[A-Za-z]+", "W", PLAY)


def test_renaming_is_seeded_and_p_sets_the_share(text):
    renamer = SpeakerRenamer(text, 0.5)
    assert renamer.rename(text, seed=1) == renamer.rename(text, seed=1)
    assert renamer.rename(text, seed=1) != renamer.rename(text, seed=2)
    assert SpeakerRenamer(text, 0.0).rename(text, seed=1) == text
    kept = [sum(bool(re.search(rf"\b{name}\b", renamer.rename(text, seed))) for name in renamer.names)
            for seed in range(20)]
    share = sum(kept) / (20 * len(renamer.names))
    assert 0.35 < share < 0.65  # about half of the names are renamed each epoch


def test_invented_names_look_like_names_and_are_new(text):
    renamer = SpeakerRenamer(text, 0.5)
    rng = random.Random(0)
    names = [renamer.invent(rng) for _ in range(200)]
    assert all(re.fullmatch(r"[A-Z]{3,12}", name) for name in names)
    assert not set(names) & set(renamer.names)
    assert len(set(names)) > 2 * len(renamer.names)  # many more new names than the text has


def test_bad_probability_or_a_text_without_speakers_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SpeakerRenamer(PLAY, 1.5)
    with pytest.raises(ValueError, match="no speaker tags"):
        SpeakerRenamer("just prose, no play here.\n" * 50, 0.5)
    SpeakerRenamer("just prose, no play here.\n", 0.0)  # off: nothing to find, nothing refused


def test_each_epoch_trains_on_its_own_renamed_tokens(text):
    from bardterm.data import Dataset
    from bardterm.training.build import retokenize as _retokenize
    from bardterm.training.tokenizer import encode, train_bpe

    tokenizer = train_bpe(text, 400)
    dataset = Dataset("play", {"train": text, "validation": "", "test": ""}, "0" * 64)
    config = {"seed": 1, "rename_speakers": 0.5, "bpe_dropout": 0.0, "base": "scratch"}
    tokens = _retokenize(config, tokenizer, dataset)
    epoch0, epoch1 = tokenizer.decode(tokens(0)), tokenizer.decode(tokens(1))
    renamer = SpeakerRenamer(text, 0.5)
    assert epoch0 == renamer.rename(text, 2 * (1 * 1_000_003 + 0) + 1) != epoch1
    assert epoch0 != text and tokens(0).tolist() == encode(tokenizer, epoch0).tolist()
    # With BPE-dropout too, the renamed text is what gets split finer.
    both = _retokenize({**config, "bpe_dropout": 0.3}, tokenizer, dataset)
    assert tokenizer.decode(both(0)) == epoch0 and len(both(0)) > len(tokens(0))
    assert _retokenize({**config, "rename_speakers": 0.0}, tokenizer, dataset) is None
    # --rename-epochs 1: renamed in epoch 0 only, the real names from then on.
    first_only = _retokenize({**config, "rename_epochs": 1}, tokenizer, dataset)
    assert tokenizer.decode(first_only(0)) == epoch0
    assert first_only(1).tolist() == first_only(5).tolist() == encode(tokenizer, text).tolist()


def test_bardterm_train_with_renaming(text, tmp_path, capsys, monkeypatch):
    import torch

    from bardterm.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plain, renamed, meta = train_plain_and_with(tmp_path, text, "--rename-speakers", "0.5")
    assert any(not torch.equal(plain[k], renamed[k]) for k in plain)
    assert meta["config"]["rename_speakers"] == 0.5
    capsys.readouterr()
    # A text with no speakers: one clear line, nothing written.
    prose = tmp_path / "prose.txt"
    prose.write_text("It was a dark and stormy night; the rain fell in torrents.\n" * 400)
    assert main(tiny_train_args(prose, tmp_path / "prose", "--rename-speakers", "0.5")) == 2
    err = capsys.readouterr().err.strip()
    assert "--rename-speakers" in err and "no speaker tags" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "prose").exists()
    assert main(tiny_train_args(tmp_path / "text.txt", tmp_path / "bad", "--rename-speakers", "2")) == 2
    assert "invalid --rename-speakers" in capsys.readouterr().err
