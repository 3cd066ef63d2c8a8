"""The error for bad user input: its message names the key and what is allowed."""


class InputError(ValueError):
    """Bad input from the user (spec, data, teacher); the command line prints it as one line."""
