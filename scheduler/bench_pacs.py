"""`medq bench pacs`: studies/s of a PACS round trip (QIDO-RS planning, WADO-RS retrieval inside
the chunk tasks, segmentation, SEG + SR written and stored back with STOW-RS) against the same
studies from a local folder (same model, same outputs, same worker), on the same machine.

Where the time goes is measured apart, in this process, on the same PACS: planning by QIDO-RS
alone, retrieving every instance alone (WADO-RS, one request per instance), and storing every
output alone (STOW-RS of the job's own SEG and SR files, which the PACS already holds)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def make_series(folder: Path, n_studies: int, slices: int) -> list[Path]:
    """n CT studies of one series each, from pydicom's CT_small (a real CT slice)."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    paths = []
    for k in range(n_studies):
        study, series = generate_uid(), generate_uid()
        for z in range(slices):
            ds = template.copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.5 * z], [1, 0, 0, 0, 1, 0]
            ds.InstanceNumber = z + 1
            ds.PixelData = (template.pixel_array + np.int16(z)).astype(template.pixel_array.dtype).tobytes()
            path = folder / f"study{k:03d}" / f"slice{z:03d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def _job(settings, source, checkpoint: Path, out: Path, **options) -> tuple[float, dict]:
    from medq.common.store import open_store
    from medq.scheduler.infer_plan import submit_infer
    from medq.scheduler.local import wait_for_job

    start = time.perf_counter()
    job_id, n, _ = submit_infer(settings, source, str(checkpoint), out_dir=str(out), outputs=("seg", "sr"),
                                chunk=4, **options)
    job = wait_for_job(open_store(settings), job_id, timeout=3600, poll=0.1)
    return time.perf_counter() - start, {"job": job_id, "studies": n, "state": job["state"]}


def run(root: Path, checkpoint: Path, pacs, n_studies: int, slices: int, pool) -> dict[str, Any]:
    from medq.common.inference.dicomweb import PacsAccess, PacsClient
    from medq.common.inference.sources import open_source
    from medq.common.inference.stow import store_file
    from medq.common.settings import load_settings
    from medq.scheduler.local import local_workers

    files = make_series(root / "studies", n_studies, slices)
    for path in files:
        pacs.upload(path)
    env = {"MEDQ_HOME": str(root / "home")}
    settings = load_settings({**os.environ, **env})
    with local_workers(pool, root / "logs", env, ready_timeout=300):
        # a first job warms the worker (model load, imports), so neither timed run pays for it
        _job(settings, root / "studies", checkpoint, root / "warm")
        local_s, local = _job(settings, root / "studies", checkpoint, root / "out-local")
        pacs_s, remote = _job(settings, pacs.dicomweb, checkpoint, root / "out-pacs", query="Modality=CT",
                              send_to=pacs.dicomweb)
    # where the time goes, each part alone
    start = time.perf_counter()
    archive = open_source(pacs.dicomweb, settings, "Modality=CT")
    entries = list(archive.entries())
    qido_s = time.perf_counter() - start
    start = time.perf_counter()
    for entry in entries:
        archive.read(entry.path)
    wado_s = time.perf_counter() - start
    client = PacsClient(pacs.dicomweb, PacsAccess.from_settings(settings))
    outputs = sorted((root / "out-pacs").glob("seg/*.dcm")) + sorted((root / "out-pacs").glob("sr/*.dcm"))
    start = time.perf_counter()
    for path in outputs:
        store_file(client, path)
    stow_s = time.perf_counter() - start
    return {
        "studies": n_studies, "slices_per_study": slices, "slice_size": 128, "outputs": "seg,sr",
        "local_folder": {**local, "seconds": round(local_s, 2), "studies_per_s": round(n_studies / local_s, 3)},
        "pacs_round_trip": {**remote, "seconds": round(pacs_s, 2), "studies_per_s": round(n_studies / pacs_s, 3)},
        "ratio_pacs_to_local": round(local_s / pacs_s, 3),
        "parts_alone_s": {"qido_planning": round(qido_s, 3), "wado_retrieve_all": round(wado_s, 3),
                          "wado_per_instance_ms": round(1000 * wado_s / max(1, len(entries)), 2),
                          "stow_all_outputs": round(stow_s, 3),
                          "stow_per_object_ms": round(1000 * stow_s / max(1, len(outputs)), 2)},
    }
