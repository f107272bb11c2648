"""The conversation being held, apart from any screen: how turns are framed for the model, the turns
themselves, where they are saved, resuming and exporting. Plain Python, testable without a terminal.

The app owns one `ChatSession`; the chat pane hands it each turn as it ends and asks it for the next prompt.
A framing turns the turns into what the model continues. `ChatFrame` writes a play script between two
speakers, the shipped checkpoint's own format; `TemplateFrame` (bardterm/chat_format.py) uses the model's own
chat template. Both have the same members: `kind`, `label`, `system`, `user_name`, `model_name`,
`name_of(speaker)`, `prompt(turns)` (text, or token ids), `stop()` and `stop_token_ids()`. The session picks one
for the loaded model (`framing`: auto, template or script) and keeps the system prompt across both.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from bardterm.chat_format import FRAMINGS, TemplateFrame, has_chat_template
from bardterm.errors import BardtermError
from bardterm.files import write_atomic
from bardterm.tui.store import Conversation, Store, Turn, to_json, to_markdown

DEFAULT_TEMPLATE = "{name}:\n{text}\n\n"


@dataclass
class ChatFrame:
    """A play script: each turn is `template` with the speaker's name and text; the model's turn ends where it
    starts the user's next line (a stop string), the way a play script hands over between speakers."""

    user_name: str = "ROMEO"
    model_name: str = "JULIET"
    template: str = DEFAULT_TEMPLATE
    system: str = ""  # written above the first turn, as a play's stage direction
    kind: ClassVar[str] = "script"
    label: ClassVar[str] = "play script"

    def __post_init__(self):
        self.system = self.system.strip()
        check_template(self.template)
        for name in (self.user_name, self.model_name):
            if not name.strip() or "\n" in name:
                raise BardtermError(f"invalid speaker name {name!r}: use a non-empty name on one line")

    def prompt(self, turns: list[Turn]) -> str:
        written = "".join(self.template.format(name=self.name_of(t.speaker), text=t.text.strip()) for t in turns)
        return (self.system + "\n\n" if self.system else "") + written + self._opening(self.model_name)

    def stop(self) -> list[str]:
        """Where the model's turn is over: the template's end of a turn (a blank line in a play script,
        which comes before any next speaker), or the start of the user's next line."""
        ending = self.template.split("{text}")[1]
        return [s for s in dict.fromkeys([ending.strip(" "), "\n" + self._opening(self.user_name).strip()]) if s]

    def name_of(self, speaker: str) -> str:
        return self.user_name if speaker == "user" else self.model_name

    def stop_token_ids(self) -> set[int]:
        return set()  # EOS ends a reply as it ends any generation

    def _opening(self, name: str) -> str:
        return self.template.split("{text}")[0].format(name=name)


def check_framing(framing: str) -> str:
    if framing not in FRAMINGS:
        raise BardtermError(f"invalid framing {framing!r}: use one of {', '.join(FRAMINGS)} (auto: the model's chat "
                            "template when it has one, else a play script)")
    return framing


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

    text: str | list[int]  # token ids from a chat template
    stop: list[str]
    max_new_tokens: int
    stop_token_ids: set[int] = field(default_factory=set)
    left_out: int = 0  # the oldest turns that did not fit
    notes: list[str] = field(default_factory=list)  # what was fitted, for a quiet line in the status bar


class ChatSession:
    """One conversation at a time: its frame, its turns, and the store that commits each turn as it ends.

    Failures to write to the store never lose the conversation (it stays in memory); they are reported
    through `report(message)`, which the app turns into a notification.
    """

    def __init__(self, frame: ChatFrame | None = None, report: Callable[[str], None] = lambda message: None,
                 framing: str = "auto", system: str = ""):
        script = frame or ChatFrame()
        self.script = ChatFrame(script.user_name, script.model_name, script.template)  # whichever framing is used
        self.framing = check_framing(framing)
        self.system = system.strip() or script.system
        self.frame: ChatFrame | TemplateFrame = ChatFrame(script.user_name, script.model_name, script.template,
                                                          self.system)  # the framing in use
        self.report = report
        self.store: Store | None = None
        self.conversation: Conversation | None = None  # None until the first turn of a new conversation
        self.checkpoint = ""  # recorded with a new conversation
        self._model = None  # (tokenizer, end-of-turn ids) of the loaded model, for its chat template

    # -- the framing ----------------------------------------------------------------------------------------

    def use_model(self, tokenizer, stop_ids: set[int]) -> list[str]:
        """Frame for a newly loaded model (its chat template if it has one, under `auto`); returns what to tell
        the user, e.g. that its template takes no system prompt."""
        self._model = (tokenizer, set(stop_ids))
        return self._reframe()

    def set_framing(self, framing: str) -> list[str]:
        """`auto`, `template` or `script`; raises BardtermError (e.g. template for a model that has none)."""
        framing = check_framing(framing)
        if framing == "template" and self._model is not None and not has_chat_template(self._model[0]):
            raise BardtermError("this model's tokenizer has no chat template: use /set framing script or auto")
        self.framing = framing
        return self._reframe()

    def set_system(self, system: str) -> None:
        """The system prompt (empty: none); raises BardtermError if the model's chat template has no system role."""
        system = system.strip()
        if isinstance(self.frame, TemplateFrame):
            frame = TemplateFrame(self._model[0], self._model[1], system)  # raises if the template refuses it
        else:
            frame = ChatFrame(self.script.user_name, self.script.model_name, self.script.template, system)
        self.system, self.frame = system, frame
        self._store_setup()

    def _reframe(self) -> list[str]:
        notes = []
        tokenizer = self._model[0] if self._model else None
        use_template = tokenizer is not None and self.framing != "script" and has_chat_template(tokenizer)
        if self.framing == "template" and tokenizer is not None and not use_template:
            notes.append("this model's tokenizer has no chat template: chatting as a play script")
        if use_template:
            try:
                self.frame = TemplateFrame(tokenizer, self._model[1], self.system)
            except BardtermError as error:  # its template has no system role
                notes.append(f"{error} (the system prompt is kept for other models)")
                self.frame = TemplateFrame(tokenizer, self._model[1])
        else:
            self.frame = ChatFrame(self.script.user_name, self.script.model_name, self.script.template, self.system)
        self._store_setup()
        return notes

    def _store_setup(self) -> None:
        """A conversation under way records the checkpoint, framing and system prompt it now goes on with."""
        conversation = self.conversation
        if conversation is None:
            return
        conversation.checkpoint, conversation.framing = self.checkpoint or conversation.checkpoint, self.frame.kind
        conversation.system = self.system
        if self.store is not None and conversation.id:
            self._stored(self.store.set_setup, conversation.id, conversation.checkpoint, conversation.framing,
                         conversation.system)

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
                                               self.frame.model_name, self.frame.kind, self.system) or 0
            self.conversation = Conversation(conversation_id, "", 0.0, 0.0, self.checkpoint, self.frame.user_name,
                                             self.frame.model_name, self.frame.kind, self.system)
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

    def compare_prompt(self, text: str, count_tokens: Callable[[str], int], context: int | None,
                       max_new_tokens: int) -> ReplyPrompt:
        """The prompt for replies to `text` as the user's next message after the conversation so far (before
        its last user turn, which compare starts from), framed as the chat frames it."""
        turns = self.turns
        last_user = max((i for i, t in enumerate(turns) if t.speaker == "user"), default=len(turns))
        return self.reply_prompt(count_tokens, context, max_new_tokens, turns[:last_user] + [Turn("user", text)])

    def reply_prompt(self, count_tokens: Callable[[str], int], context: int | None,
                     max_new_tokens: int, turns: list[Turn] | None = None) -> ReplyPrompt:
        """The prompt for the model's next turn. When the conversation outgrows the model's context, the oldest
        whole turns are left out (never the newest) until the prompt takes at most what the engine would keep
        (the context less the reply, but at least half the context), and the reply gets what room is left."""
        turns, frame = self.turns if turns is None else turns, self.frame
        size = lambda prompt: len(prompt) if isinstance(prompt, list) else count_tokens(prompt)  # noqa: E731
        text = frame.prompt(turns)
        if context is None:
            return ReplyPrompt(text, frame.stop(), max_new_tokens, frame.stop_token_ids())
        budget = max(context - max_new_tokens, context // 2)
        # Where the kept turns may start: any turn in a play script, a user's turn under a chat template (many,
        # Mistral's and Gemma's among them, refuse a conversation that does not start with the user). The
        # system prompt belongs to the frame, so it is never left out.
        starts = [i for i, t in enumerate(turns) if frame.kind == "script" or t.speaker == "user"] or [0]
        low, high = 0, len(starts) - 1  # binary search: the fewest oldest turns to leave out
        if size(text) > budget:
            while low < high:
                middle = (low + high) // 2
                if size(frame.prompt(turns[starts[middle]:])) <= budget:
                    high = middle
                else:
                    low = middle + 1
            text = frame.prompt(turns[starts[low]:])
        left_out = starts[low] if low else 0
        notes = [f"{left_out} oldest turn{'s' * (left_out != 1)} left out of the context"] if left_out else []
        room = max(1, context - size(text))
        if room < max_new_tokens:
            notes.append(f"replies up to {room} tokens")
        return ReplyPrompt(text, frame.stop(), min(max_new_tokens, room), frame.stop_token_ids(), left_out, notes)

    # -- whole conversations --------------------------------------------------------------------------------

    def resume(self, conversation_id: int) -> Conversation:
        """Continue a saved conversation, with its speakers; raises BardtermError."""
        if self.store is None:
            raise BardtermError("the conversation store could not be opened: nothing to continue")
        conversation = self.store.load(conversation_id)
        self.conversation = None  # not re-recorded while its own setup is restored
        self.system = conversation.system
        if conversation.framing in ("template", "script"):
            self.framing = conversation.framing
        if conversation.framing != "template":
            self.script = ChatFrame(conversation.user_name, conversation.model_name, self.script.template)
        notes = self._reframe()
        self.conversation = conversation
        for note in notes:
            self.report(note)
        return conversation

    def latest(self) -> int | None:
        """The id of the most recently updated conversation, if any."""
        latest = self.store.latest() if self.store is not None else None
        return latest.id if latest else None

    def new(self) -> None:
        self.conversation = None

    def set_frame(self, frame: ChatFrame) -> None:
        """New speaker names or play-script template; a conversation under way keeps the names for its saved
        turns. Under a chat template they wait until the play script is used."""
        self.script = ChatFrame(frame.user_name, frame.model_name, frame.template)
        if isinstance(self.frame, TemplateFrame):
            return
        self.frame = ChatFrame(frame.user_name, frame.model_name, frame.template, self.system)
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
        framing = f"framing: {self.frame.label} (/set framing: {self.framing})"
        system = f"system prompt: {self.system!r}" if self.system else "system prompt: none (/system TEXT)"
        return (f"{framing}\n{system}\nspeakers: user {self.script.user_name!r}, bard {self.script.model_name!r}; "
                f"template {self.script.template!r}\nconversation: {conversation} in {store}")

    def _stored(self, action, *args):
        try:
            return action(*args)
        except sqlite3.Error as error:
            self.report(f"could not save to {self.store.path} ({error}): the conversation is kept in memory; "
                        "/export it to keep it")
            return None
