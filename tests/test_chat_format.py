"""Chatting in the model's own format: a tiny ChatML-style tokenizer with a Jinja chat template and special
tokens (and one whose template refuses a system role), a tiny random GPT-2 for each, no screen."""

from __future__ import annotations

import json

import pytest
import torch

from bardterm.chat_format import TemplateFrame, accepts_system, end_of_turn_ids
from bardterm.decoders.base import Processor
from bardterm.engine import Generation
from bardterm.errors import BardtermError
from bardterm.registry import build
from bardterm.tui.conversation import ChatFrame, ChatSession
from bardterm.tui.store import Turn, to_json, to_markdown
from conftest import make_gpt2, make_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Gemma-style: no system role, and it says so by raising from the template.
NO_SYSTEM = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
             "{% endif %}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
             "\n{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
             "{% endif %}")


def chat_tokenizer(template: str, specials: list[str]):
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def chatml():
    tokenizer = chat_tokenizer(CHATML, ["<|im_start|>", "<|im_end|>"])
    model = make_gpt2(tokenizer, n_positions=256)
    # The end of a turn is <|im_end|>, named only in the generation config, beside EOS: a list, as Qwen's is.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return tokenizer, model


@pytest.fixture(scope="module")
def no_system():
    tokenizer = chat_tokenizer(NO_SYSTEM, ["<start_of_turn>", "<end_of_turn>"])
    return tokenizer, make_gpt2(tokenizer)


TURNS = [Turn("user", "Hello there"), Turn("model", "Good day"), Turn("user", "What is the question?")]


def test_template_prompt_is_exactly_apply_chat_template(chatml):
    tokenizer, model = chatml
    frame = TemplateFrame(tokenizer, end_of_turn_ids(model, tokenizer), system="Answer briefly.")
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "Good day"}, {"role": "user", "content": "What is the question?"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert frame.prompt(TURNS) == expected
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert expected.count(im_start) == 5 and expected.count(im_end) == 4  # special tokens, one id each
    # and those ids, unchanged, are what the model is given
    generation = Generation(model, tokenizer, frame.prompt(TURNS), build("greedy"), max_new_tokens=2,
                            stop_token_ids=frame.stop_token_ids())
    assert generation.run.prompt_ids[0].tolist() == expected


def test_typed_control_tokens_stay_text(chatml):
    tokenizer, model = chatml
    frame = TemplateFrame(tokenizer, end_of_turn_ids(model, tokenizer))
    ids = frame.prompt([Turn("user", "end it <|im_end|> here")])
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 1  # only the template's own


def test_end_of_turn_ids_join_eos_and_the_generation_config_list(chatml):
    tokenizer, model = chatml
    assert end_of_turn_ids(model, tokenizer) == {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}


class Scripted(Processor):
    """Makes the model say a fixed sequence of tokens, one per step."""

    name = "scripted"
    help = "test only"
    script: list[int] = []
    offset = 0

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.script[input_ids.shape[1] - self.offset]] = 0.0
        return forced


def test_end_of_turn_token_stops_the_reply_and_never_shows(chatml):
    tokenizer, model = chatml
    frame = TemplateFrame(tokenizer, end_of_turn_ids(model, tokenizer))
    prompt = frame.prompt(TURNS)
    said = tokenizer("To be")["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    setup = build("greedy", chain=[])
    scripted = Scripted()
    scripted.script, scripted.offset = said + [im_end] + said, len(prompt)
    setup.chain.append(scripted)
    generation = Generation(model, tokenizer, prompt, setup, max_new_tokens=20,
                            stop_token_ids=frame.stop_token_ids())
    for _ in generation:
        pass
    result = generation.result
    assert result.stop_reason == "eos" and result.token_ids == said + [im_end]
    assert result.text == "To be" and "im_end" not in result.text


def test_template_without_system_role_says_so(no_system, chatml):
    tokenizer, model = no_system
    assert not accepts_system(tokenizer) and accepts_system(chatml[0])
    with pytest.raises(BardtermError, match="no system role"):
        TemplateFrame(tokenizer, end_of_turn_ids(model, tokenizer), system="Be kind.")
    frame = TemplateFrame(tokenizer, end_of_turn_ids(model, tokenizer))
    assert frame.prompt(TURNS) == tokenizer.apply_chat_template(frame.messages(TURNS), add_generation_prompt=True,
                                                                 tokenize=True, return_dict=False)
    session = ChatSession(system="Be kind.")
    notes = session.use_model(tokenizer, end_of_turn_ids(model, tokenizer))
    assert session.frame.kind == "template" and len(notes) == 1 and "no system role" in notes[0]
    with pytest.raises(BardtermError, match="no system role"):
        session.set_system("Be brief.")


def test_framing_follows_the_tokenizer_and_can_be_forced(chatml, tokenizer, gpt2):
    session = ChatSession(ChatFrame("ROMEO", "JULIET"))
    assert session.use_model(tokenizer, end_of_turn_ids(gpt2, tokenizer)) == []
    assert session.frame.kind == "script" and session.frame.label == "play script"
    with pytest.raises(BardtermError, match="no chat template"):
        session.set_framing("template")
    session.use_model(chatml[0], end_of_turn_ids(chatml[1], chatml[0]))
    assert session.frame.kind == "template" and session.frame.label == "chat template"
    session.set_framing("script")
    assert session.frame.kind == "script" and session.frame.prompt(TURNS[:1]) == "ROMEO:\nHello there\n\nJULIET:\n"
    session.set_framing("auto")
    assert session.frame.kind == "template"
    with pytest.raises(BardtermError, match="invalid framing"):
        session.set_framing("chatml")


def test_system_prompt_in_a_play_script_is_written_above_the_turns():
    frame = ChatFrame("ROMEO", "JULIET", system="A garden at night.")
    assert frame.prompt(TURNS[:1]) == "A garden at night.\n\nROMEO:\nHello there\n\nJULIET:\n"


def test_conversation_stores_checkpoint_framing_and_system_and_resume_restores_them(tmp_path, chatml):
    tokenizer, model = chatml
    session = ChatSession(report=pytest.fail)
    session.open_store(tmp_path / "c.sqlite3")
    session.checkpoint = "tiny-org/tiny-chat"
    session.use_model(tokenizer, end_of_turn_ids(model, tokenizer))
    session.set_system("Answer briefly.")
    for turn in TURNS:
        session.add_turn(Turn(turn.speaker, turn.text))
    conversation_id = session.conversation.id
    sent = session.frame.prompt(session.turns)
    session.close()

    again = ChatSession(report=pytest.fail)
    again.open_store(tmp_path / "c.sqlite3")
    again.use_model(tokenizer, end_of_turn_ids(model, tokenizer))
    again.set_framing("script")  # the user had switched: resuming brings the conversation's own back
    resumed = again.resume(conversation_id)
    assert (resumed.checkpoint, resumed.framing, resumed.system) == ("tiny-org/tiny-chat", "template", "Answer briefly.")
    assert again.frame.kind == "template" and again.system == "Answer briefly."
    assert again.frame.prompt(again.turns) == sent
    exported = json.loads(to_json(resumed))
    assert exported["system"] == "Answer briefly." and exported["framing"] == "template"
    assert to_markdown(resumed).splitlines()[2:5] == ["**system**:", "", "Answer briefly."]
    again.close()


def test_an_older_store_gains_the_new_columns(tmp_path):
    import sqlite3

    from bardterm.tui.store import Store

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE conversations (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL DEFAULT '',"
                     " created REAL NOT NULL, updated REAL NOT NULL, checkpoint TEXT NOT NULL DEFAULT '', user_name "
                     "TEXT NOT NULL, model_name TEXT NOT NULL); INSERT INTO conversations (created, updated, "
                     "user_name, model_name) VALUES (1, 1, 'A', 'B');")
    db.commit()
    db.close()
    store = Store(path)
    assert (store.load(1).framing, store.load(1).system) == ("", "")
    store.close()


def test_context_overflow_keeps_the_system_prompt_and_starts_at_a_user_turn(chatml):
    tokenizer, model = chatml
    session = ChatSession(system="Answer briefly.")
    session.use_model(tokenizer, end_of_turn_ids(model, tokenizer))
    for i in range(12):
        session.add_turn(Turn("user" if i % 2 == 0 else "model", f"turn {i} " + "To be or not " * 3))
    session.add_turn(Turn("user", "the last question"))
    whole = len(session.frame.prompt(session.turns))
    context = whole // 2 + 20
    fitted = session.reply_prompt(lambda text: pytest.fail("token ids are counted, not text"), context=context,
                                  max_new_tokens=20)
    assert fitted.left_out > 0 and fitted.left_out % 2 == 0  # whole exchanges: the kept turns open with the user
    assert fitted.text == session.frame.prompt(session.turns[fitted.left_out:])
    assert len(fitted.text) <= max(context - 20, context // 2)
    assert len(session.frame.prompt(session.turns[fitted.left_out - 2:])) > max(context - 20, context // 2)
    assert tokenizer.decode(fitted.text).startswith("<|im_start|>system\nAnswer briefly.")
    assert fitted.stop_token_ids == end_of_turn_ids(model, tokenizer)
    assert fitted.notes[0] == f"{fitted.left_out} oldest turns left out of the context"
