"""CUDA-only checks: a member trains on cuda:0 with mixed precision. Skipped without a GPU."""

import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_a_member_trains_on_cuda_with_mixed_precision(tmp_path):
    from medq.common.families.chest.csvio import make_split, read_landmark_csv
    from medq.common.families.chest.synth import synth_chest
    from medq.common.families.chest.train import train_member
    from medq.common.families.chest.spec import EnsembleSpec

    data = tmp_path / "data"
    synth_chest(data, n=24, seed=1)
    spec = EnsembleSpec(epochs_head=1, epochs=1, image_size=128, batch_size=8, amp=True)
    split = make_split(read_landmark_csv(data / "landmarks.csv"), spec.split)
    outcome = train_member(spec, split, data, seed=0, workdir=tmp_path / "work")
    assert outcome.device == "cuda:0"
    assert math.isfinite(outcome.best_val_loss)
    assert torch.load(outcome.last_checkpoint, weights_only=True)["scaler"]["scale"] > 0
