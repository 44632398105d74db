"""Project names, and the parsing of fair-share weights ("labA=2,labB=1", 1 by default) and
hard quotas ("labA=4"), with errors that name the entry: ``MEDQ_SHARES`` and ``MEDQ_QUOTAS``,
read by the store's admission dispatcher (common/store/admission.py).
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass

from medq.common.errors import SpecError

# Letters, digits, '.', '_' and '-', starting with a letter or digit: safe as a metric label,
# a file name and a psql literal. Upper case is kept (labA and laba are two projects).
PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_project(name: str, where: str = "--project") -> str:
    if not PROJECT_RE.fullmatch(name or ""):
        raise SpecError(f"{where}: {name!r} is not a project name (letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit, at most 63 characters)")
    return name


def default_project(chosen: str = "") -> str:
    """``chosen`` (the settings' ``MEDQ_PROJECT``), else the user's login name made into a project name."""
    if chosen:
        return check_project(chosen, "MEDQ_PROJECT")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's bare uid)
        user = ""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", user).lstrip("._-")[:63]
    return cleaned or "default"


@dataclass(frozen=True)
class Placement:
    """Where a job stands among others: its project and priority (high, normal, low)."""

    project: str
    priority: str = "normal"


def _entries(text: str, setting: str) -> list[tuple[str, str]]:
    pairs = []
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        if not sep or not value.strip():
            raise SpecError(f"{setting}: {entry!r} must look like NAME=NUMBER (for example labA=2)")
        check_project(name.strip(), f"{setting} entry {entry!r}")
        pairs.append((name.strip(), value.strip()))
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SpecError(f"{setting}: {', '.join(repeated)} given more than once")
    return pairs


def parse_shares(text: str | None, setting: str = "MEDQ_SHARES") -> dict[str, float]:
    """'labA=2,labB=1' -> {'labA': 2.0, 'labB': 1.0}; a share is a positive number."""
    shares = {}
    for name, value in _entries(text or "", setting):
        try:
            share = float(value)
        except ValueError:
            share = float("nan")
        if not share > 0 or share == float("inf"):
            raise SpecError(f"{setting}: the share of {name} must be a positive number, got {value!r}")
        shares[name] = share
    return shares


def parse_quotas(text: str | None, setting: str = "MEDQ_QUOTAS") -> dict[str, int]:
    """'labA=4' -> {'labA': 4}; a quota is a whole number of GPUs, 0 or more."""
    quotas = {}
    for name, value in _entries(text or "", setting):
        if not value.isdigit():
            raise SpecError(f"{setting}: the quota of {name} must be a whole number of GPUs, got {value!r}")
        quotas[name] = int(value)
    return quotas
