"""Every user-facing error of ``archlab.train``, in one leaf module that imports nothing of the project.

The CLIs (``launch/``) print each as one line with a non-zero exit status. The modules that raise them
import them from here, so the names stay importable where they were defined before.
"""


# ---------------------------------------------------------------- configuration


class ConfigError(ValueError):
    """A bad config key or value given by the user."""


class TransferError(ConfigError):
    """``train.init_from`` names no usable run, or one whose params do not fit this model."""


class TeacherError(ConfigError):
    """``train.teacher`` names no usable run, or one trained for a different task or data."""


class MeshError(ValueError):
    """A mesh, rule set or process layout that does not fit the available devices."""


# ---------------------------------------------------------------- data


class DataError(ValueError):
    """Missing, empty, corrupt or unusable input data (the CLI prints it in one line, exit 2)."""


# ---------------------------------------------------------------- checkpoints and the workdir


class CheckpointError(RuntimeError):
    """No intact checkpoint where one was expected."""


class CheckpointConfigError(CheckpointError):
    """The checkpoints are intact but hold other shapes than this config's (a config change, not damage)."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, file too large, permissions)."""


class NonFiniteStateError(RuntimeError):
    """A state about to be saved holds NaN/inf; nothing was written."""


class WorkdirError(ValueError):
    """A workdir that is a file, cannot be written, is in use, or would lose an earlier run's history."""


class WorkdirLockedError(RuntimeError):
    """Another live process is training in this workdir."""


# ---------------------------------------------------------------- training


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or state; no checkpoint of it was written."""


class OutOfMemoryError(RuntimeError):
    """The config needs more memory than a device has."""


# ---------------------------------------------------------------- model optimisation and search


class QuantizeError(ValueError):
    """A run that cannot be post-training quantised, or bad PTQ arguments."""


class SearchError(ValueError):
    """Bad NAS input: config values, a missing or malformed table, a chunk that does not fit."""


class PopulationMemoryError(ValueError):
    """A population chunk whose training program would not fit in the device's memory."""


class TableError(ValueError):
    """A benchmark table that is missing, empty or malformed (one line, naming file and row)."""
