"""The CLI's one kind of expected failure."""


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit `code`
    (1: the command failed; 2: it was called wrongly)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
