"""Exception types: one clear message naming the file or key, printed by the CLI without a traceback."""


class CarvanaSegError(Exception):
    """Base class for errors the CLI reports as a single line."""


class DataError(CarvanaSegError):
    """Bad or missing input data (corrupt image, missing mask, wrong size)."""


class ConfigError(CarvanaSegError):
    """Bad configuration key or value."""


class CredentialsError(CarvanaSegError):
    """Missing or unusable Kaggle credentials or network."""


class WriteError(CarvanaSegError):
    """An output could not be written (full disk, read-only file system, no permission); names the final output."""
