"""The errors the command line turns into one readable line and an exit code.

They live apart from the modules that raise them, which import torch: a config
typo or a missing file is reported without waiting seconds for that import.
"""


class DatasetError(ValueError):
    """A data file is missing, damaged or not what it claims to be."""


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss, incompatible checkpoint, ...)."""


class CheckpointError(TrainingError):
    """A checkpoint cannot be read or written; the message names the file."""


class Interrupted(TrainingError):
    """SIGTERM / SIGINT received: a checkpoint was written, the run can resume."""
