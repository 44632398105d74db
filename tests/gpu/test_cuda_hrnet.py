"""CUDA-only: an HRNet member trains with mixed precision and channels-last. Skipped without a GPU."""

import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_an_hrnet_member_trains_on_cuda_with_amp_and_channels_last(tmp_path):
    from medq.common.families.ceph.readers import read_isbi, split_stems
    from medq.common.families.ceph.synth import synth_ceph
    from medq.common.families.ceph.train import evaluate_hrnet, train_hrnet
    from medq.common.training.checkpoint import load_checkpoint
    from medq.common.families.ceph.spec import HRNetSpec

    synth_ceph(tmp_path / "data", n=12, seed=1, n_test=0, width=160, height=200)
    data = read_isbi(tmp_path / "data")
    spec = HRNetSpec(width="w18s", image_size=128, epochs=2, batch_size=4, warmup_epochs=1, top_k=1,
                     amp=True, channels_last=True)
    split = split_stems([r.stem for r in data.records], spec.split)
    by_stem = {r.stem: r for r in data.records}
    records = {part: [by_stem[s] for s in stems] for part, stems in split.items()}
    outcome = train_hrnet(spec, records, tmp_path / "work")
    assert outcome.device == "cuda:0" and math.isfinite(outcome.best_val_mre)
    assert load_checkpoint(outcome.last_checkpoint)["scaler"]["scale"] > 0
    metrics = evaluate_hrnet(outcome.best_checkpoints, records["test"])
    assert metrics["unit"] == "mm" and math.isfinite(metrics["mre_mm"])
