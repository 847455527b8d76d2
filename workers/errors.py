"""Errors of the data plane (workers). Each message says what to do next."""


class WorkerError(Exception):
    """Base class of the workers' errors."""


class ScorerError(WorkerError):
    """A scorer could not score this sample; recorded on the Score, distinct from a 0."""


class UnknownScorer(WorkerError):
    """A scorer name that is not registered (raised before anything is enqueued)."""


class ScorerConfigError(WorkerError):
    """A scorer's parameters are invalid (bad regex, unknown parameter...)."""


class TemplateError(WorkerError):
    """The prompt template cannot be rendered for a test case (missing variable...)."""


class TargetError(WorkerError):
    """A callable target cannot be imported or returned something unusable."""
