"""User-facing errors: the CLIs print them as one line and exit with status 2."""


class UsageError(ValueError):
    """Bad input from the user (a flag, a file, a CSV row); the message says what would be valid."""
