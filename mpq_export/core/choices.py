"""The fixed sets of values some options take, as types: a value is checked once, where it is made
(`Scorer("orm")`), and compared as itself afterwards, never as a string."""

from __future__ import annotations

from enum import Enum

from mpq_export.util.errors import MPQError


class Choice(str, Enum):
    """A str-valued choice: JSON and f-strings show its value ("orm"), and `of` gives the one-line error."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls if m.value in cls._offered())

    @classmethod
    def _offered(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)

    @classmethod
    def of(cls, value, flag: str):
        if isinstance(value, cls):
            return value
        try:
            member = cls(value)
        except ValueError:
            member = None
        if member is None or member.value not in cls._offered():
            raise MPQError(f"{flag} must be one of {', '.join(cls.choices())}, got '{value}'")
        return member


class Scorer(Choice):
    """What the mpq allocation's objective is built from (--importance)."""
    ORM = "orm"  # the paper's orthogonality metric (stages/orm.py)
    SENSITIVITY = "sensitivity"  # measured noise-prediction error of each layer alone (stages/sensitivity.py)
    TRAJECTORY = "trajectory"  # measured final-sample error of each layer alone (stages/sensitivity.py)
    NONE = "none"  # a baseline allocation (uniform, random, smallest-first) reads no scores

    @classmethod
    def _offered(cls) -> tuple[str, ...]:
        return ("orm", "sensitivity", "trajectory")

    @property
    def measured(self) -> bool:
        """Scores measured by probing the model (sensitivity.py), rather than read off calibration."""
        return self in (Scorer.SENSITIVITY, Scorer.TRAJECTORY)


class BuildMode(Choice):
    """--build-engine: whether the TensorRT engine is built."""
    AUTO = "auto"  # when TensorRT and a GPU are present
    YES = "yes"  # always; a one-line error when it cannot be
    NO = "no"
