"""One flip permutation for every family: each pair swapped, everything else in place."""

import pytest

from medq.common.families.chest.schema import FLIP_PAIRS, N_LANDMARKS, flip_permutation as chest_permutation
from medq.common.landmark_pairs import flip_permutation


def test_each_pair_swaps_and_the_rest_stay():
    assert flip_permutation(5, ((0, 4), (1, 2))) == [4, 2, 1, 3, 0]
    assert flip_permutation(3, ()) == [0, 1, 2]


def test_the_permutation_undoes_itself():
    order = flip_permutation(19, ((2, 3), (10, 11)))
    assert [order[k] for k in order] == list(range(19))


def test_the_chest_schema_uses_the_shared_one():
    assert chest_permutation() == flip_permutation(N_LANDMARKS, FLIP_PAIRS)
    assert chest_permutation()[2] == 3 and chest_permutation()[0] == 0


@pytest.mark.parametrize("pairs", [((0, 5),), ((1, 1),), ((0, 1), (1, 2)), ((-1, 2),)])
def test_pairs_out_of_range_or_overlapping_are_refused(pairs):
    with pytest.raises(ValueError, match="distinct 0-based indices below 5"):
        flip_permutation(5, pairs)
