"""The errors the command line turns into one readable line and an exit code.

They live apart from the modules that raise them, which import torch: a config
typo or a missing file is reported without waiting seconds for that import.
"""

import argparse


class UsageError(ValueError):
    """A command-line argument is wrong; the message names it (exit 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes raise :class:`UsageError` — reported as one line, exit 2, by
    the command line's error boundary — instead of printing the usage and exiting."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class DatasetError(ValueError):
    """A data file is missing, damaged or not what it claims to be."""


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss, incompatible checkpoint, ...)."""


class CheckpointError(TrainingError):
    """A checkpoint cannot be read or written; the message names the file."""


class RunFileError(TrainingError):
    """A run's log or W&B record cannot be read; the message names the file."""


class Interrupted(TrainingError):
    """SIGTERM / SIGINT received: a checkpoint was written, the run can resume."""
