"""CUDA-only checks of bulk inference: float16 autocast + channels_last on the GPU agrees with
float32 on the CPU, and a chunk decodes in loader processes beside the GPU (its uint8 batches
pinned). Skipped without one."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    from medq import common
    from medq.common.training.checkpoint import save_atomic
    from medq.common.families.chest.model import build_model
    from medq.common.families.chest.spec import EnsembleSpec

    spec = EnsembleSpec(image_size=128)
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        path = tmp_path_factory.mktemp(f"seed{seed}") / "best.pt"
        save_atomic({"model": build_model(spec).state_dict(), "spec": spec.to_dict(), "seed": seed, "epoch": 1,
                     "val_loss": 0.01, "val_error_px": 1.0, "code_version": common.__version__}, path)
        paths.append(path)
    return paths


def test_mixed_precision_landmarks_agree_with_float32_on_the_cpu(members):
    from medq.common.families.chest.predict import EnsemblePredictor

    images = torch.rand(8, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    sizes = np.full((8, 2), 2000.0)  # a 2000-px radiograph magnifies any error 15x over 128 px
    gpu = EnsemblePredictor.from_checkpoints(members)
    cpu = EnsemblePredictor.from_checkpoints(members, device="cpu")
    assert gpu.device.type == "cuda" and gpu.use_amp
    gpu_landmarks, gpu_spread = gpu.locate(images, sizes)
    cpu_landmarks, cpu_spread = cpu.locate(images, sizes)
    assert np.abs(gpu_landmarks - cpu_landmarks).max() < 1.0  # px of the 2000-px original
    assert np.abs(gpu_spread - cpu_spread).max() < 1.0


def test_a_chunk_decodes_in_loader_processes_and_predicts_on_the_gpu(members, tmp_path):
    from medq.common.families.chest.predict import EnsemblePredictor
    from medq.common.families.chest.synth import synth_chest
    from medq.common.inference.archive import open_archive
    from medq.common.inference.chunk import run_chunk

    synth_chest(tmp_path / "data", n=12, seed=3)
    (tmp_path / "data" / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    paths = sorted(p.name for p in (tmp_path / "data" / "images").iterdir())
    records = []
    stats = run_chunk(list(enumerate(paths)), open_archive(tmp_path / "data" / "images"),
                      EnsemblePredictor.from_checkpoints(members, studies_per_batch=5), loader_workers=None,
                      on_results=records.extend)
    assert (stats.done, stats.failed) == (12, 1)
    assert [r.study_id for r in records] == list(range(13))
    assert all(np.isfinite(np.asarray(r.result["landmarks_px"])).all() for r in records if r.state == "done")
