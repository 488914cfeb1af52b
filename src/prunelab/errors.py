"""The floor every module may import: the one exception type for problems a user can fix. Imports nothing of prunelab."""


class PrunelabError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits non-zero."""


class TrainingDiverged(PrunelabError):
    """The training loss became infinite or NaN (a rate too high for the model, or fp16 overflow)."""
