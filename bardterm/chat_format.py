"""A chat in the model's own format: its tokenizer's chat template (`apply_chat_template`), for instruct models.

    frame = TemplateFrame(tokenizer, end_of_turn_ids(model, tokenizer), system="Answer briefly.")
    ids = frame.prompt(turns)          # exactly apply_chat_template(messages, add_generation_prompt=True)
    Generation(model, tokenizer, ids, setup, stop_token_ids=frame.stop_token_ids())

The reply ends at the model's end-of-turn token(s), which never show (they are special tokens). A model without
a template (the shipped checkpoint, GPT-2) is talked to as a play script instead: `ChatFrame` in
tui/conversation.py. Both framings have the same members: `kind`, `label`, `system`, `user_name`,
`model_name`, `name_of(speaker)`, `prompt(turns)`, `stop()` and `stop_token_ids()`.

User text is encoded as text even where it spells a control token (`<|im_end|>` typed by the user stays
characters), through transformers' `sanitize_control_tokens`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bardterm.errors import BardtermError

if TYPE_CHECKING:
    from bardterm.tui.store import Turn

FRAMINGS = ("auto", "template", "script")  # auto: the chat template when the tokenizer has one
_SYSTEM_PROBE = "bardterm system prompt probe"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def end_of_turn_ids(model, tokenizer) -> set[int]:
    """Where a chat model's turn ends: the tokenizer's EOS and the generation config's eos_token_id (one id or
    a list), together."""
    found = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {int(i) for i in found if i is not None}


class TemplateFrame:
    kind = "template"
    label = "chat template"
    user_name = "you"
    model_name = "assistant"

    def __init__(self, tokenizer, stop_ids: set[int], system: str = ""):
        if not has_chat_template(tokenizer):
            raise BardtermError("this model's tokenizer has no chat template: use the play-script framing "
                                "(/set framing script)")
        self.tokenizer = tokenizer
        self._stop_ids = set(stop_ids)
        self.system = system.strip()
        if self.system and not accepts_system(tokenizer):
            raise BardtermError("this model's chat template has no system role, so it cannot take a system "
                                "prompt: /system with nothing after it clears it")

    def name_of(self, speaker: str) -> str:
        return self.user_name if speaker == "user" else self.model_name

    def messages(self, turns: list[Turn]) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user" if t.speaker == "user" else "assistant", "content": t.text.strip()}
                         for t in turns]

    def prompt(self, turns: list[Turn]) -> list[int]:
        """The token ids of the conversation so far and the opening of the model's turn."""
        return render(self.tokenizer, self.messages(turns), tokenize=True)

    def stop(self) -> list[str]:
        return []  # the end-of-turn tokens end a reply

    def stop_token_ids(self) -> set[int]:
        return set(self._stop_ids)


def render(tokenizer, messages: list[dict], tokenize: bool):
    """apply_chat_template with the opening of the assistant's turn; a template's refusal as one line."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize,
                                             return_dict=False, sanitize_control_tokens=tokenize)
    except TemplateError as error:
        raise BardtermError(f"the model's chat template refused this conversation ({error})") from None


def accepts_system(tokenizer) -> bool:
    """Whether the chat template takes a system message, and shows it (some raise, some drop it silently)."""
    try:
        text = render(tokenizer, [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "hi"}],
                      tokenize=False)
    except BardtermError:
        return False
    return _SYSTEM_PROBE in text
