"""Names the store keeps results and files under, in one place (torch-free).

A job's results are one row per subject: a member (``seed-3``), a combination of members
(``ensemble-mean``), an evaluation set of a single-model job (``set-test``, ``set-Test1Data``), or
a report job's files (``report``).
A member's files are artifacts named ``seed-3/best`` and ``seed-3/last``; its working folder is
``<artifacts>/<job id>/seed-3``.
"""

from __future__ import annotations

MEMBER, COMBINED, EVALUATION_SET = "seed-", "ensemble-", "set-"
REPORT = "report"
TEST_SET, UNTRAINED_SET = "test", "test-untrained"  # a single-model job's held-out split, and its model untrained  # a report job's one result: the paths of its HTML (and PDF)


def member(seed: int) -> str:
    return f"{MEMBER}{int(seed)}"


def combined(how: str) -> str:
    return f"{COMBINED}{how}"


def evaluation_set(name: str) -> str:
    return f"{EVALUATION_SET}{name}"


def artifact(seed: int, which: str) -> str:
    """``seed-3/best``: the member's ``which`` ("best", "last") checkpoint."""
    return f"{member(seed)}/{which}"


def member_folder(seed: int) -> str:
    return member(seed)
