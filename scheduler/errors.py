"""Errors of the control plane. Each message says what went wrong and what to do next."""


class SchedulerError(Exception):
    """Base class of the control plane's errors."""

    exit_code = 1


class InputError(SchedulerError):
    """The user's input (a file, an option, a parameter) is invalid; nothing was written."""

    exit_code = 2


class DatasetFormatError(InputError):
    """A dataset file is malformed; the message starts with FILE:LINE."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path, self.line = path, line


class EnqueueError(SchedulerError):
    """Tasks could not be sent to the broker; the experiment is marked failed."""


class WaitTimeout(SchedulerError):
    """wait_for_experiment gave up before the experiment finished (it keeps running)."""


class InvalidRun(InputError):
    """A production run that cannot be stored as sent; nothing of its batch was written.
    `problems` pairs the field at fault (`output[2].text`, "" for the run as a whole)
    with what is wrong; `where("runs[3]")` names them inside a batch."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__(f"invalid run: {self.where('')}")

    def where(self, prefix: str) -> str:
        """The problems as `PREFIX.field: problem; ...` (no prefix: `field: problem`)."""
        parts = []
        for field, problem in self.problems:
            name = prefix + ("." if prefix and field and field[0] != "[" else "") + field
            parts.append(f"{name}: {problem}" if name else problem)
        return "; ".join(parts)


class StoreFailed(SchedulerError):
    """The database did not take a write. The message names the error's class, never the
    SQL or the values; `unavailable` is True when the database could not be reached or
    was momentarily unable to work (retry later), False for anything else (a bug)."""

    def __init__(self, message: str, *, unavailable: bool) -> None:
        super().__init__(message)
        self.unavailable = unavailable
