"""The numbers of a job spec: every one finite, and each within what a real run could use.

A NaN learning rate used to pass validation, be stored, and then make PostgreSQL refuse the
job's JSON; ``--image-size 100000`` or ``--loader-workers 1000`` were accepted and failed (or
hung a host) on a worker hours later. Each spec lists its bounds once, with the option a user
typed, and ``check_numbers`` runs first in its ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator

from medq.common.errors import SpecError


@dataclass(frozen=True)
class Bound:
    low: float
    high: float
    option: str = ""  # the CLI option that sets it, for the message
    low_open: bool = False  # low itself is not allowed (a learning rate of 0)

    def admits(self, value: float) -> bool:
        return (value > self.low if self.low_open else value >= self.low) and value <= self.high

    def describe(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


def positive(high: float, option: str = "") -> Bound:
    return Bound(0, high, option, low_open=True)


def between(low: float, high: float, option: str = "") -> Bound:
    return Bound(low, high, option)


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _numbers(item)


def check_numbers(spec: Any, bounds: dict[str, Bound]) -> None:
    """SpecError naming the field (and its option) of the first number that is not finite or
    is out of its bounds; tuples are checked item by item."""
    for field in dataclasses.fields(spec):
        bound = bounds.get(field.name)
        name = field.name + (f" ({bound.option})" if bound and bound.option else "")
        for number in _numbers(getattr(spec, field.name)):
            if not math.isfinite(number):
                raise SpecError(f"{name} must be a finite number, got {number}")
            if bound is not None and not bound.admits(number):
                raise SpecError(f"{name} must be in {bound.describe()}, got {number:g}")
