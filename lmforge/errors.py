"""One exception type per kind of mistake a user can make.

Each message names the file, line or field at fault and says how to fix it.
"""


class LmforgeError(Exception):
    """Base class of every error lmforge raises on purpose."""


class ConfigError(LmforgeError, ValueError):
    """A configuration field is unknown, ill-typed or out of range."""


class DataError(LmforgeError, ValueError):
    """Input data is empty, undecodable or malformed (names file and line/offset)."""


class AssetError(LmforgeError, FileNotFoundError):
    """An embedded model or corpus package is missing or does not verify."""


class CheckpointError(LmforgeError, RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model shape."""


class TrainingDivergedError(LmforgeError, FloatingPointError):
    """The loss or the gradients became NaN/inf; the last good checkpoint is kept."""


class RegistryError(LmforgeError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RunInterrupted(LmforgeError):
    """A run stopped on SIGTERM or SIGINT after saving a checkpoint; rerunning resumes it."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number  # what a shell reports for that signal


class CheckpointWarning(UserWarning):
    """A checkpoint was unreadable and an older one was used instead."""
