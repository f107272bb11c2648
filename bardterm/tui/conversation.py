"""The conversation being held, apart from any screen: how turns are framed for the model, the turns
themselves, where they are saved, resuming and exporting. Plain Python, testable without a terminal.

The app owns one `ChatSession`; the chat pane hands it each turn as it ends and asks it for the next prompt.
A framing turns the turns into the text that the model continues. `ChatFrame` writes a play script between two
speakers, the shipped checkpoint's own format. Another framing (a tokenizer's chat template, say) needs the
same members: `user_name`, `model_name`, `name_of(speaker)`, `prompt(turns)` and `stop()`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bardterm.errors import BardtermError
from bardterm.tui.store import Conversation, Store, Turn, to_json, to_markdown, write_atomic

DEFAULT_TEMPLATE = "{name}:\n{text}\n\n"


@dataclass
class ChatFrame:
    """A play script: each turn is `template` with the speaker's name and text; the model's turn ends where it
    starts the user's next line (a stop string), the way a play script hands over between speakers."""

    user_name: str = "ROMEO"
    model_name: str = "JULIET"
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self):
        check_template(self.template)
        for name in (self.user_name, self.model_name):
            if not name.strip() or "\n" in name:
                raise BardtermError(f"invalid speaker name {name!r}: use a non-empty name on one line")

    def prompt(self, turns: list[Turn]) -> str:
        written = "".join(self.template.format(name=self.name_of(t.speaker), text=t.text.strip()) for t in turns)
        return written + self._opening(self.model_name)

    def stop(self) -> list[str]:
        """Where the model's turn is over: the template's end of a turn (a blank line in a play script,
        which comes before any next speaker), or the start of the user's next line."""
        ending = self.template.split("{text}")[1]
        return [s for s in dict.fromkeys([ending.strip(" "), "\n" + self._opening(self.user_name).strip()]) if s]

    def name_of(self, speaker: str) -> str:
        return self.user_name if speaker == "user" else self.model_name

    def _opening(self, name: str) -> str:
        return self.template.split("{text}")[0].format(name=name)


def check_template(template: str) -> None:
    if "{text}" not in template or "{name}" not in template.split("{text}")[0]:
        raise BardtermError(f"invalid template {template!r}: it needs {{name}} before {{text}}, "
                            "e.g. '{name}:\\n{text}\\n\\n'")
    try:
        template.format(name="", text="")
    except (KeyError, IndexError, ValueError) as error:
        raise BardtermError(f"invalid template {template!r} ({error}): use only {{name}} and {{text}}") from None


@dataclass
class ReplyPrompt:
    """What the model is asked to continue for its next reply, fitted to its context window."""

    text: str
    stop: list[str]
    max_new_tokens: int
    left_out: int = 0  # the oldest turns that did not fit
    notes: list[str] = field(default_factory=list)  # what was fitted, for a quiet line in the status bar


class ChatSession:
    """One conversation at a time: its frame, its turns, and the store that commits each turn as it ends.

    Failures to write to the store never lose the conversation (it stays in memory); they are reported
    through `report(message)`, which the app turns into a notification.
    """

    def __init__(self, frame: ChatFrame | None = None, report: Callable[[str], None] = lambda message: None):
        self.frame = frame or ChatFrame()
        self.report = report
        self.store: Store | None = None
        self.conversation: Conversation | None = None  # None until the first turn of a new conversation
        self.checkpoint = ""  # recorded with a new conversation

    def open_store(self, path: Path | None = None) -> None:
        """Open the conversation store (default: in the data directory); raises BardtermError."""
        self.store = Store(path)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    # -- the turns ------------------------------------------------------------------------------------------

    @property
    def turns(self) -> list[Turn]:
        return self.conversation.turns if self.conversation else []

    def add_turn(self, turn: Turn) -> None:
        """Keep a finished turn, and commit it to the store at once (a new conversation starts with its first)."""
        if self.conversation is None:
            conversation_id = 0
            if self.store is not None:
                conversation_id = self._stored(self.store.new_conversation, self.checkpoint, self.frame.user_name,
                                               self.frame.model_name) or 0
            self.conversation = Conversation(conversation_id, "", 0.0, 0.0, self.checkpoint, self.frame.user_name,
                                             self.frame.model_name)
        self.conversation.turns.append(turn)
        if self.store is not None and self.conversation.id:
            self._stored(self.store.add_turn, self.conversation.id, turn)

    def drop_last_reply(self) -> None:
        """Forget the model's last turn (to regenerate it); raises BardtermError when there is none to answer."""
        if not self.turns:
            raise BardtermError("nothing to regenerate yet: send a message first")
        if self.turns[-1].speaker == "model":
            turn = self.turns.pop()
            if self.store is not None and turn.id is not None:
                self._stored(self.store.delete_turn, turn.id)

    def awaiting_reply(self) -> bool:
        """The last turn is the user's (a reply was lost, say to a crash): the model's turn is due."""
        return bool(self.turns) and self.turns[-1].speaker == "user"

    def last_text(self, speaker: str) -> str | None:
        return next((t.text for t in reversed(self.turns) if t.speaker == speaker), None)

    def reply_prompt(self, count_tokens: Callable[[str], int], context: int | None,
                     max_new_tokens: int) -> ReplyPrompt:
        """The prompt for the model's next turn. When the conversation outgrows the model's context, the oldest
        whole turns are left out (never the newest) until the prompt takes at most what the engine would keep
        (the context less the reply, but at least half the context), and the reply gets what room is left."""
        turns = self.turns
        text = self.frame.prompt(turns)
        if context is None:
            return ReplyPrompt(text, self.frame.stop(), max_new_tokens)
        budget = max(context - max_new_tokens, context // 2)
        low, high = 0, max(len(turns) - 1, 0)  # binary search: the fewest oldest turns to leave out
        if count_tokens(text) > budget:
            while low < high:
                middle = (low + high) // 2
                if count_tokens(self.frame.prompt(turns[middle:])) <= budget:
                    high = middle
                else:
                    low = middle + 1
            text = self.frame.prompt(turns[low:])
        notes = [f"{low} oldest turn{'s' * (low != 1)} left out of the context"] if low else []
        room = max(1, context - count_tokens(text))
        if room < max_new_tokens:
            notes.append(f"replies up to {room} tokens")
        return ReplyPrompt(text, self.frame.stop(), min(max_new_tokens, room), low, notes)

    # -- whole conversations --------------------------------------------------------------------------------

    def resume(self, conversation_id: int) -> Conversation:
        """Continue a saved conversation, with its speakers; raises BardtermError."""
        if self.store is None:
            raise BardtermError("the conversation store could not be opened: nothing to continue")
        conversation = self.store.load(conversation_id)
        self.frame = ChatFrame(conversation.user_name, conversation.model_name, self.frame.template)
        self.conversation = conversation
        return conversation

    def latest(self) -> int | None:
        """The id of the most recently updated conversation, if any."""
        latest = self.store.latest() if self.store is not None else None
        return latest.id if latest else None

    def new(self) -> None:
        self.conversation = None

    def set_frame(self, frame: ChatFrame) -> None:
        """New speaker names or template; a conversation under way keeps the names for its saved turns."""
        self.frame = frame
        conversation = self.conversation
        if conversation is not None:
            conversation.user_name, conversation.model_name = frame.user_name, frame.model_name
            if self.store is not None and conversation.id:
                self._stored(self.store.set_names, conversation.id, frame.user_name, frame.model_name)

    def save(self, title: str) -> str:
        """Name the conversation (its turns are saved already); returns what to tell the user."""
        if not self.turns:
            raise BardtermError("nothing to save yet: every turn is saved as it finishes, so send a message first")
        if self.store is None or not self.conversation.id:
            raise BardtermError("the conversation store could not be opened: use /export md or /export json")
        if title:
            self.conversation.title = title
            self._stored(self.store.set_title, self.conversation.id, title)
        return f"saved conversation {self.conversation.id} ({self.conversation.label()}) in {self.store.path}"

    def export(self, fmt: str, path: str | Path | None = None) -> Path:
        """Write the conversation as Markdown (`md`) or JSON; with no path, a file in the current directory.
        Returns the absolute path written."""
        if not self.turns:
            raise BardtermError("nothing to export yet: send a message first")
        target = Path(path or f"bardterm-conversation-{self.conversation.id}.{fmt}").expanduser().absolute()
        write_atomic(target, to_markdown(self.conversation) if fmt == "md" else to_json(self.conversation))
        return target

    def describe(self) -> str:
        store = str(self.store.path) if self.store else "not available"
        conversation = f"{self.conversation.id}" if self.conversation else "new"
        return (f"speakers: user {self.frame.user_name!r}, bard {self.frame.model_name!r}; "
                f"template {self.frame.template!r}\nconversation: {conversation} in {store}")

    def _stored(self, action, *args):
        try:
            return action(*args)
        except sqlite3.Error as error:
            self.report(f"could not save to {self.store.path} ({error}): the conversation is kept in memory; "
                        "/export it to keep it")
            return None
