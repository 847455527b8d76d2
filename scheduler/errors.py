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
