"""Fuzz drivers, one per target, and their common runner (run.py); README.md says how to
run them and what the last soak found."""


class Finding(AssertionError):
    """A broken property, with a `kind` that stays the same for every input breaking it the
    same way (the runner counts findings by kind)."""

    def __init__(self, kind: str, details: str) -> None:
        super().__init__(f"{kind}: {details}")
        self.kind = kind
