"""The user-facing errors: a bad configuration, bad data, and training that cannot go on."""


class ConfigError(ValueError):
    """A configuration problem; the message names the file, the field and what is allowed."""


class DatasetError(ValueError):
    """A dataset problem; the message names the file or folder and what was expected."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the detector, the epoch and
    the settings to look at."""


class OutputError(RuntimeError):
    """The output folder or a file in it cannot be made or written; the message names it."""
