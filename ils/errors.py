"""Error types that the CLI reports as one clear line (exit status 2) instead of a traceback."""


class UserError(Exception):
    """Bad input or configuration: the message says what is wrong and what to do."""
