"""The data package's one user-facing error."""


class DataError(ValueError):
    """Missing, empty, corrupt or unusable input data (the CLI prints it in one line, exit 2)."""
