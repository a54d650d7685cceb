"""The two kinds of user mistake every layer reports: a bad configuration and bad data."""


class ConfigError(ValueError):
    """A configuration problem; the message names the file, the field and what is allowed."""


class DatasetError(ValueError):
    """A dataset problem; the message names the file or folder and what was expected."""
