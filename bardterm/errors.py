"""The one exception type the CLI and the TUI show to a user as a single line."""


class BardtermError(Exception):
    """Something the user can fix. The message says what went wrong and how to fix it."""
