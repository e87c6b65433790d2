"""The failures that end a run with a permanent exit code (DESIGN §3).

Anything else the trainer raises is retryable: the operator restarts the gang.
"""

EXIT_DONE = 0
EXIT_INVALID_CONFIG = 2
EXIT_UNREADABLE_DATA = 3
EXIT_STOPPED_BY_SIGTERM = 143


class ConfigError(Exception):
    """The configuration cannot work; retrying will not help (exit 2)."""


class DataError(Exception):
    """The token data is missing or unreadable; retrying will not help (exit 3)."""
