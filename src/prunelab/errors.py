"""The floor every module may import: the one exception type for problems a user can fix. Imports nothing of prunelab."""


class PrunelabError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits non-zero."""


class TrainingDiverged(PrunelabError):
    """The training loss became infinite or NaN (a rate too high for the model, or fp16 overflow). `what`: where it
    happened; `advice`: what to change (a caller that knows which setting set the rate raises it again with its own)."""

    def __init__(self, what: str, advice: str = "lower the learning rate (--lr/--finetune-lr) or use --precision fp32"):
        super().__init__(f"{what}; {advice}")
        self.what = what
