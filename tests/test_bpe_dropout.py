"""BPE-dropout: the plain segmentation when p is 0, a seeded random finer one otherwise, fresh tokens each epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import train_plain_and_with

from bardterm.training.batches import BlockStream
from bardterm.training.bpe_dropout import BPEDropout
from bardterm.training.tokenizer import encode, train_bpe

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny_shakespeare" / "input.txt"


@pytest.fixture(scope="module")
def text() -> str:
    if not CORPUS.is_file():
        pytest.skip(f"tiny_shakespeare test copy not found at {CORPUS}")
    return CORPUS.read_text()[:40_000]


@pytest.fixture(scope="module")
def tokenizer(text):
    return train_bpe(text, 800)


def test_without_dropout_it_segments_exactly_as_the_tokenizer(tokenizer, text):
    assert BPEDropout(tokenizer, 0.0).encode(text, seed=1) == encode(tokenizer, text).tolist()


def test_a_special_token_in_the_text_stays_one_token(tokenizer, text):
    joined = text[:2000] + "<|endoftext|>" + text[2000:4000]
    ids = BPEDropout(tokenizer, 0.0).encode(joined, seed=1)
    assert ids == encode(tokenizer, joined).tolist()
    assert ids.count(tokenizer.convert_tokens_to_ids("<|endoftext|>")) == 1
    assert tokenizer.decode(BPEDropout(tokenizer, 0.3).encode(joined, seed=1)) == joined


def test_with_dropout_the_pieces_are_finer_spell_the_same_text_and_follow_the_seed(tokenizer, text):
    plain = encode(tokenizer, text).tolist()
    dropper = BPEDropout(tokenizer, 0.1)
    ids = dropper.encode(text, seed=1)
    assert tokenizer.decode(ids) == text
    assert 1.05 * len(plain) < len(ids) < 1.6 * len(plain)  # finer, not characters
    assert ids == dropper.encode(text, seed=1)
    assert ids != dropper.encode(text, seed=2)
    heavier = BPEDropout(tokenizer, 0.5).encode(text, seed=1)
    assert len(heavier) > len(ids)


def test_a_bad_probability_or_a_tokenizer_without_merges_is_refused(tokenizer):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        BPEDropout(tokenizer, 1.0)
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    word_level = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")))
    with pytest.raises(ValueError, match="byte-level BPE"):
        BPEDropout(word_level, 0.1)


def test_each_epoch_draws_its_blocks_from_its_own_tokens():
    plain = torch.arange(100)
    calls = []

    def retokenize(epoch):
        calls.append(epoch)
        return torch.arange(130) + 1000 * (epoch + 1)  # longer, as dropout tokens are

    stream = BlockStream(plain, 8, seed=3, retokenize=retokenize)
    again = BlockStream(plain, 8, seed=3, retokenize=retokenize)
    n = stream.n_blocks
    assert n == BlockStream(plain, 8, seed=3).n_blocks  # an epoch is as long as with the plain tokens
    x, y = stream.batch(n - 2, 4)  # two blocks of epoch 0, two of epoch 1
    assert ((x[:2] // 1000) == 1).all() and ((x[2:] // 1000) == 2).all()
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, again.batch(n - 2, 4)[0])
    assert calls[:2] == [0, 1]


def test_training_with_bpe_dropout_trains_on_other_tokens(tmp_path, text, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plain, dropout, meta = train_plain_and_with(tmp_path, text, "--bpe-dropout", "0.3")
    assert any(not torch.equal(plain[k], dropout[k]) for k in plain)
    assert meta["config"]["bpe_dropout"] == 0.3
