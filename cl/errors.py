"""Errors the platform reports to users as one readable message."""


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
