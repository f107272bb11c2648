"""Conversations in SQLite, in the user's data directory, written as they happen.

Each turn is committed the moment it is finished (or cancelled, marked partial), so killing the app
mid-generation loses nothing but the turn being generated. `BARDTERM_HOME` moves the data directory.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from bardterm.errors import BardtermError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    checkpoint TEXT NOT NULL DEFAULT '',
    user_name TEXT NOT NULL,
    model_name TEXT NOT NULL,
    framing TEXT NOT NULL DEFAULT '',  -- 'template' (the model's chat template) or 'script' ('' before it existed)
    system TEXT NOT NULL DEFAULT ''    -- the system prompt
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a regenerated reply is a new turn
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    speaker TEXT NOT NULL,           -- 'user' or 'model'
    text TEXT NOT NULL,
    partial INTEGER NOT NULL DEFAULT 0,
    decoder TEXT NOT NULL DEFAULT '',
    stats TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
"""


def data_dir() -> Path:
    """`$BARDTERM_HOME`, else the platform's user data directory for bardterm."""
    home = os.environ.get("BARDTERM_HOME")
    if home:
        return Path(home).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("bardterm"))


@dataclass
class Turn:
    speaker: str  # "user" or "model"
    text: str
    partial: bool = False
    decoder: str = ""
    stats: dict = field(default_factory=dict)
    id: int | None = None


@dataclass
class Conversation:
    id: int
    title: str
    created: float
    updated: float
    checkpoint: str
    user_name: str
    model_name: str
    framing: str = ""
    system: str = ""
    turns: list[Turn] = field(default_factory=list)

    def label(self) -> str:
        first = next((t.text for t in self.turns if t.speaker == "user"), "")
        return self.title or " ".join(first.split())[:60] or "(empty)"


class Store:
    def __init__(self, path: Path | None = None):
        path = path or data_dir() / "conversations.sqlite3"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path)
            self.db.execute("PRAGMA foreign_keys = ON")
            self.db.executescript(_SCHEMA)
            _add_missing_columns(self.db)
        except sqlite3.DatabaseError as error:
            raise BardtermError(f"cannot open the conversation store {path} ({error}): "
                                "move the file aside or set BARDTERM_HOME to another folder") from None
        except OSError as error:
            raise BardtermError(f"cannot create {path.parent} ({error.strerror}): set BARDTERM_HOME to a "
                                "writable folder") from None
        self.path = path

    def close(self) -> None:
        self.db.close()

    def new_conversation(self, checkpoint: str, user_name: str, model_name: str, framing: str = "",
                         system: str = "") -> int:
        now = time.time()
        with self.db:
            cursor = self.db.execute(
                "INSERT INTO conversations (created, updated, checkpoint, user_name, model_name, framing, system) "
                "VALUES (?,?,?,?,?,?,?)", (now, now, checkpoint, user_name, model_name, framing, system))
        return cursor.lastrowid

    def add_turn(self, conversation_id: int, turn: Turn) -> int:
        """Commit one turn at once: this is what makes a killed app lose no finished turn."""
        now = time.time()
        with self.db:
            cursor = self.db.execute(
                "INSERT INTO turns (conversation_id, speaker, text, partial, decoder, stats, created) "
                "VALUES (?,?,?,?,?,?,?)",
                (conversation_id, turn.speaker, turn.text, int(turn.partial), turn.decoder,
                 json.dumps(turn.stats), now))
            self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        turn.id = cursor.lastrowid
        return turn.id

    def delete_turn(self, turn_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM turns WHERE id = ?", (turn_id,))

    def set_title(self, conversation_id: int, title: str) -> None:
        with self.db:
            self.db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))

    def set_setup(self, conversation_id: int, checkpoint: str, framing: str, system: str) -> None:
        with self.db:
            self.db.execute("UPDATE conversations SET checkpoint = ?, framing = ?, system = ? WHERE id = ?",
                            (checkpoint, framing, system, conversation_id))

    def set_names(self, conversation_id: int, user_name: str, model_name: str) -> None:
        with self.db:
            self.db.execute("UPDATE conversations SET user_name = ?, model_name = ? WHERE id = ?",
                            (user_name, model_name, conversation_id))

    def conversations(self) -> list[Conversation]:
        """Every conversation that has at least one turn, the most recently updated first."""
        rows = self.db.execute(
            "SELECT id FROM conversations WHERE EXISTS (SELECT 1 FROM turns WHERE conversation_id = conversations.id) "
            "ORDER BY updated DESC, id DESC").fetchall()
        return [self.load(row[0]) for row in rows]

    def latest(self) -> Conversation | None:
        found = self.conversations()
        return found[0] if found else None

    def load(self, conversation_id: int) -> Conversation:
        row = self.db.execute("SELECT id, title, created, updated, checkpoint, user_name, model_name, framing, "
                              "system FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise BardtermError(f"no conversation {conversation_id}: pick one with Ctrl+O")
        conversation = Conversation(*row)
        for turn_id, speaker, text, partial, decoder, stats in self.db.execute(
                "SELECT id, speaker, text, partial, decoder, stats FROM turns WHERE conversation_id = ? ORDER BY id",
                (conversation_id,)):
            conversation.turns.append(Turn(speaker, text, bool(partial), decoder, json.loads(stats), turn_id))
        return conversation


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """A store written by an older bardterm gains the newer columns (with their defaults)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(conversations)")}
    with db:
        for column in ("framing", "system"):
            if column not in have:
                db.execute(f"ALTER TABLE conversations ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")


def to_markdown(conversation: Conversation) -> str:
    lines = [f"# {conversation.label()}", ""]
    if conversation.system:
        lines += ["**system**:", "", conversation.system, ""]
    for turn in conversation.turns:
        name = conversation.user_name if turn.speaker == "user" else conversation.model_name
        note = " (stopped)" if turn.partial else ""
        lines += [f"**{name}**{note}:", "", turn.text, ""]
    return "\n".join(lines)


def to_json(conversation: Conversation) -> str:
    data = {
        "id": conversation.id, "title": conversation.label(), "created": conversation.created,
        "checkpoint": conversation.checkpoint, "user_name": conversation.user_name,
        "model_name": conversation.model_name, "framing": conversation.framing, "system": conversation.system,
        "turns": [{"speaker": t.speaker, "name": conversation.user_name if t.speaker == "user" else
                   conversation.model_name, "text": t.text, "partial": t.partial, "decoder": t.decoder,
                   "stats": t.stats} for t in conversation.turns],
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
