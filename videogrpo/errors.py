"""User-facing errors: the CLI prints these as one line and exits with status 2."""


class UserError(ValueError):
    """Bad input from the user (config, prompt, path); the message names the problem and the fix."""


class RunStopped(Exception):
    """A run that stopped on purpose before its end (a signal, a failing reward) after saving a
    checkpoint; the CLI prints the message, which says how to continue, and exits `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
