"""Errors whose message is meant for the user."""


class SpecdError(Exception):
    """An error with a message meant for the user (the CLI prints it without a traceback)."""
