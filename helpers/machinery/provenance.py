"""Which data a checkpoint was trained on, and whether the data at hand is the same.

A checkpoint records its data twice: a readable label ("CIFAR-10 (JPEG copy)") and a fingerprint of
the data's content (the decoded-data cache's content key). Results are only comparable on the same
data, so whatever scores a checkpoint checks the data it loads against the data it was trained on.
Two fingerprints decide; where either is missing (checkpoints written before fingerprints, data sets
built by hand) only the labels can be compared, and the check says that it went by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .checkpoint import CheckpointError


class OtherDataError(CheckpointError):
    """A checkpoint meets data other than the data it was trained on, and that was not asked for."""


@dataclass(frozen=True)
class DataIdentity:
    """What a data set is: its label, and its content fingerprint when known."""

    label: str
    fingerprint: str | None = None

    def __str__(self) -> str:
        return self.label if self.fingerprint is None else f"{self.label} [data {self.fingerprint[:12]}]"

    @property
    def slug(self) -> str:
        """A file-name form: cifar-10-jpeg-copy, with the fingerprint's start when known."""
        return re.sub(r"[^a-z0-9]+", "-", str(self).lower()).strip("-")


def trained_on(state: dict) -> DataIdentity:
    """The data a checkpoint was trained on; checkpoints before fingerprints (commit 6960a31) hold the label only."""
    return DataIdentity(state.get("data", "CIFAR-10"), state.get("data_fingerprint"))


@dataclass(frozen=True)
class DataCheck:
    """The data a checkpoint was trained on beside the data it is evaluated on, and how they were compared."""

    trained: DataIdentity
    evaluated: DataIdentity

    @property
    def by_name(self) -> bool:
        """Only the labels could be compared: a fingerprint is missing on one side."""
        return self.trained.fingerprint is None or self.evaluated.fingerprint is None

    @property
    def same(self) -> bool:
        if self.by_name:
            return self.trained.label == self.evaluated.label
        return self.trained.fingerprint == self.evaluated.fingerprint

    @property
    def description(self) -> str:
        """How results name their data: its label, or 'trained on A, evaluated on B' when they differ."""
        if self.same:
            return self.evaluated.label
        return f"trained on {self.trained}, evaluated on {self.evaluated}"

    @property
    def note(self) -> str | None:
        """The one line that says the check went by name, or None when fingerprints decided."""
        if not self.by_name:
            return None
        missing = "the checkpoint records" if self.trained.fingerprint is None else "this data set has"
        return (
            f"The data was checked by name only ({self.trained.label!r} against {self.evaluated.label!r}): "
            f"{missing} no content fingerprint."
        )

    def as_dict(self) -> dict:
        return {
            "data": self.description,
            "trained_on_data": str(self.trained),
            "evaluated_on_data": str(self.evaluated),
            "data_checked_by": "name" if self.by_name else "fingerprint",
        }


def check(trained: DataIdentity, evaluated: DataIdentity, allow_other: bool = False) -> DataCheck:
    """The comparison of the two; other data is an OtherDataError unless `allow_other`."""
    found = DataCheck(trained, evaluated)
    if not found.same and not allow_other:
        raise OtherDataError(
            f"The checkpoint was trained on {trained} and this is {evaluated}: evaluate it on its own data "
            "(--data or CIFAR10_DATA), or pass --other-data (allow_other_data=True) to score it anyway, "
            "labelled 'trained on A, evaluated on B'."
        )
    return found
