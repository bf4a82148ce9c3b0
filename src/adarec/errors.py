"""Errors a user can cause: the CLI prints their message and exits non-zero, no traceback."""


class UserError(Exception):
    """Bad input from a user: a data file, a config, a command-line option, a request."""
