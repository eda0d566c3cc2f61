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
    AUTO = "auto"  # probed where its probes cost at most PROBE_COST_LIMIT x calibration's forwards, else orm-error
    ORM = "orm"  # the paper's orthogonality metric (stages/orm.py): maximise bits x importance
    ORM_ERROR = "orm-error"  # ORM importance x each format's expected error (stages/scores.py)
    PROBED = "probed"  # one probe per layer measures its gain; x each format's expected error (stages/scores.py)
    SENSITIVITY = "sensitivity"  # measured noise-prediction error of each layer and format alone (sensitivity.py)
    TRAJECTORY = "trajectory"  # measured final-sample error of each layer and format alone (sensitivity.py)
    NONE = "none"  # a baseline allocation (uniform, random, smallest-first) reads no scores

    @classmethod
    def _offered(cls) -> tuple[str, ...]:
        return ("auto", "orm", "orm-error", "probed", "sensitivity", "trajectory")

    @property
    def measured(self) -> bool:
        """Every (layer, format) measured by probing the model (sensitivity.py)."""
        return self in (Scorer.SENSITIVITY, Scorer.TRAJECTORY)

    @property
    def from_errors(self) -> bool:
        """A per-layer gain times each format's expected error (stages/scores.py)."""
        return self in (Scorer.ORM_ERROR, Scorer.PROBED)


class Switch(Choice):
    """An option that is on, off, or decided by what the run finds (the report says what it found)."""
    AUTO = "auto"
    YES = "yes"
    NO = "no"

    @classmethod
    def of(cls, value, flag: str):
        if isinstance(value, bool):  # a Python caller's True / False
            return cls.YES if value else cls.NO
        return super().of(value, flag)

    def __bool__(self) -> bool:  # AUTO is decided before anything reads it as a truth value
        if self is Switch.AUTO:
            raise ValueError("internal: an 'auto' switch read before it was decided")
        return self is Switch.YES


BuildMode = Switch  # --build-engine: auto builds when TensorRT and a GPU are present; yes: always (or refuses)
