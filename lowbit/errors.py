"""The one exception type users see: its message is a single line naming problem and fix."""


class LowbitError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2."""
