"""Errors the platform reports to users as one readable message."""


def reason(e: BaseException) -> str:
    """First line of an exception's message (its type when empty), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class CLError(Exception):
    """A problem the user can fix; printed without a traceback, exit code ``exit_code``."""

    exit_code = 2


class ConfigError(CLError):
    """Invalid configuration value or combination."""


class DataNotFoundError(CLError):
    """Offline data is missing; the message says how to get it."""


class NonFiniteLossError(CLError):
    """Training produced a NaN or infinite loss; the run stops and keeps its finished part."""

    exit_code = 3
