"""Nightly time windows ("22:00-06:00"): pure functions of a wall-clock time."""

from __future__ import annotations

from datetime import time

from medq.common.errors import SpecError


def parse_window(text: str) -> tuple[time, time]:
    """'22:00-06:00' -> (22:00, 06:00). A window may wrap past midnight; equal ends mean all day."""
    try:
        start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError:
        raise SpecError(f"--window must look like 22:00-06:00, got {text!r}") from None
    return start, end


def window_open(text: str | None, now: time) -> bool:
    """True when ``now`` lies in the window [start, end); no window means always open."""
    if not text:
        return True
    start, end = parse_window(text)
    if start == end:
        return True
    if start < end:
        return start <= now < end
    return now >= start or now < end
