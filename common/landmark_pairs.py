"""Left/right landmark pairs under a horizontal mirror (pure, torch-free).

Mirroring an image swaps the roles of each pair's two landmarks: what the model calls the left
one in the mirrored image is the right one of the original. Families give their own pairs (the
chest's ``schema.FLIP_PAIRS``, an HRNet spec's ``flip_pairs``), 0-based.
"""

from __future__ import annotations

from typing import Sequence


def flip_permutation(n_landmarks: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Index map of ``n_landmarks`` with each pair's two landmarks swapped (every other index
    maps to itself): ``mirrored[:, flip_permutation(...)]`` puts each landmark back in its slot.
    ValueError for an index out of range or used by two pairs."""
    order = list(range(n_landmarks))
    used: set[int] = set()
    for a, b in pairs:
        if not (0 <= a < n_landmarks and 0 <= b < n_landmarks) or a == b or {a, b} & used:
            raise ValueError(f"flip pairs must be distinct 0-based indices below {n_landmarks}, got {tuple(pairs)}")
        used |= {a, b}
        order[a], order[b] = b, a
    return order
