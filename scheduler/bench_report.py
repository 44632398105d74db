"""`medq bench report`: how long a report takes to render, and the memory an inference job's
report needs, against baselines measured in the same run.

(a) A 5-seed chest ensemble with 300 test images: synthetic radiographs on disk (the gallery
reads them), 40 epochs of history per member through the store's own calls, and results made by
the chest family's own evaluation (``Family.evaluate``) with only the networks' forward pass
replaced by truth plus noise, so the results have exactly the shape the evaluation gives, now
and after it changes. Baseline: bare matplotlib drawing and PNG-encoding as many figures.
(b) Inference jobs of 10 000 and 100 000 study records inserted in bulk, shaped as the chunk
task writes them (landmarks, spread, review flags, failures with reasons, timestamps of a
4-worker night, one chunk failed as a whole). Baseline: the report's SQL alone.

Each render runs in a fresh process, after its imports and its first connection, with the
kernel's peak-RSS mark reset (``/proc/self/clear_refs``), so the peak is the render's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

BATCH = 5000
FAILURES = ("compressed transfer syntax JPEG 2000 Image Compression and no decoder installed",
            "multi-frame image (3 frames) is not supported",
            "pixel data of shape (2048, 2048, 3) does not match Rows x Columns",
            "file too large (612,345,678 bytes; maximum 536,870,912, MEDQ_MAX_STUDY_BYTES)")
SKIPS = ("no pixel data (Structured Report)", "no pixel data (Grayscale Softcopy Presentation State)")

# Runs in a fresh interpreter: imports, one connection, then only the render is measured.
_RENDER = r"""
import json, sys, time, tracemalloc
from pathlib import Path

def status(key):
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith(key))

url, job_id, out, trace = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
from sqlalchemy import text
import medq.common.report.inference, medq.common.report.compare, matplotlib.dates
from medq.common.families.registry import family
from medq.common.report.job import render_job
from medq.common.store.db import Store
store = Store(url)
with store.engine.connect() as conn:
    conn.execute(text("SELECT 1"))
family(sys.argv[5]).inference
before = status("VmRSS:")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak-RSS mark back to the current RSS
    reset = True
except OSError:
    reset = False
if trace:
    tracemalloc.start()
start = time.perf_counter()
html = Path(render_job(store, {"jobs": [job_id], "out_dir": out})["html"])
seconds = time.perf_counter() - start
python_peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
print(json.dumps({"seconds": seconds, "rss_before_mib": before, "peak_rss_mib": status("VmHWM:"),
                  "peak_reset": reset, "python_peak_mib": python_peak, "html_kib": html.stat().st_size / 1024,
                  "figures": html.read_text().count("<img ")}))
"""

# The training report's baseline: draw and PNG-encode n figures of two 40-point lines, bare.
_BARE_FIGURES = r"""
import io, sys, time
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
n = int(sys.argv[1])
x = np.arange(1, 41)
start = time.perf_counter()
for i in range(n):
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(x, 1 / x + 0.01 * i, label="train")
    ax.plot(x, 1.2 / x, label="validation")
    ax.set_xlabel("epoch"); ax.set_ylabel("loss"); ax.legend()
    fig.savefig(io.BytesIO(), format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
print(time.perf_counter() - start)
"""


def render_in_process(url: str, job_id: str, out: Path, trace: bool = False) -> dict[str, Any]:
    from medq.common.families.chest.spec import EnsembleSpec

    done = subprocess.run([sys.executable, "-c", _RENDER, url, job_id, str(out), "1" if trace else "0",
                           EnsembleSpec.kind],
                          capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    if done.returncode != 0:
        raise RuntimeError(f"the render failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bare_figures_seconds(n: int) -> float:
    done = subprocess.run([sys.executable, "-c", _BARE_FIGURES, str(n)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


# --- (a) a 5-seed chest ensemble -------------------------------------------------------------------


def _history(rng, seed: int, spec) -> list[dict[str, Any]]:
    epochs = []
    for epoch in range(1, spec.epochs_head + spec.epochs + 1):
        head = epoch <= spec.epochs_head
        t = (epoch - spec.epochs_head) / max(spec.epochs, 1)
        decay = np.exp(-epoch / 8.0)
        lrs = ({"head": spec.lr_head} if head else
               {"backbone": spec.lr_finetune_backbone * (0.1 + 0.9 * (1 + np.cos(np.pi * t)) / 2),
                "head": spec.lr_finetune_head * (0.1 + 0.9 * (1 + np.cos(np.pi * t)) / 2)})
        epochs.append({"epoch": epoch, "phase": "head" if head else "finetune",
                       "train_loss": float(0.05 + decay * (1 + 0.05 * rng.standard_normal())),
                       "val_loss": float(0.07 + decay * (1.1 + 0.08 * rng.standard_normal())),
                       "metrics": {"val_error_px": float(4.8 + 25 * decay + 0.3 * rng.standard_normal() + 0.1 * seed)},
                       "lrs": {k: float(v) for k, v in lrs.items()},
                       "images_per_s": float(140 + 10 * rng.standard_normal()), "wall_s": float(21 + rng.random()),
                       "attempt": 1})
    return epochs


def _noisy_predict(checkpoint, records, *args, **kwargs) -> np.ndarray:
    """Truth plus noise instead of a forward pass: each image its own difficulty, each member its
    own errors (seeded by its checkpoint's name)."""
    seed = int(Path(str(checkpoint)).parent.name.rsplit("-", 1)[-1])
    truth = np.stack([np.asarray(r.points, dtype=np.float64) for r in records])
    hard = np.random.default_rng(0).gamma(2.0, 1.5, (len(records), 1, 1))  # shared by the members
    return truth + np.random.default_rng(100 + seed).normal(0, 1, truth.shape) * hard


def chest_job(store, root: Path, seeds: int = 5, test_images: int = 300) -> str:
    from medq import common
    from medq.common import subjects
    from medq.common.families.base import MemberCheckpoint
    from medq.common.families.chest.spec import EnsembleSpec
    from medq.common.families.chest.synth import synth_chest
    from medq.common.families.registry import family
    from medq.common.specs import SplitSpec
    from medq.common.store import evaluation, jobs

    fam = family(EnsembleSpec.kind)
    spec = EnsembleSpec(epochs_head=5, epochs=35, split=SplitSpec(train=0.1, val=0.1, test=0.8))
    synth_chest(root / "data", n=round(test_images / 0.8), seed=1)
    plan = json.loads(json.dumps(fam.plan(spec, root / "data")))
    plan["seeds"], plan["code_version"] = list(range(seeds)), common.__version__
    job_id, member_ids = jobs.create_job(store, spec.kind, spec.to_dict(), plan, range(seeds), fam.total_epochs(spec))
    rng, members = np.random.default_rng(3), []
    for seed, member_id in enumerate(member_ids):
        owner = uuid.uuid4().hex
        assert jobs.claim_member(store, member_id, owner, f"gpu{seed % 2}@bench", f"cuda:{seed % 2}", 600, 3).run
        history = _history(rng, seed, spec)
        best = min(history, key=lambda e: e["val_loss"])
        checkpoint = root / "artifacts" / f"seed-{seed}" / "best.pt"
        jobs.finish_member(store, member_id, owner, jobs.State.SUCCEEDED, epochs=history,
                           artifacts={subjects.artifact(seed, "best"): str(checkpoint)}, epoch=len(history),
                           val_loss=best["val_loss"], val_error_px=best["metrics"]["val_error_px"], device="cuda:0",
                           images_per_s=history[-1]["images_per_s"])
        members.append(MemberCheckpoint(member_id, seed, best["val_loss"], checkpoint))
    owner = uuid.uuid4().hex
    claim = evaluation.claim_evaluation(store, job_id, owner, 600)
    with mock.patch("medq.common.families.chest.evaluate.predict", _noisy_predict):
        results = fam.evaluate(fam.spec_from_dict(claim.spec), claim.plan, members)
    evaluation.record_results(store, job_id, owner, results, {subjects.member(m.seed): m.member_id for m in members})
    return job_id


# --- (b) inference jobs of many studies ----------------------------------------------------------


def inference_job(store, n_studies: int, chunk: int = 256, workers: int = 4, seed: int = 0) -> str:
    """An ended inference job of ``n_studies`` rows, inserted in batches as the chunk task leaves
    them: a night of ``workers`` workers from 22:00 UTC, one worker lost half way, one chunk failed."""
    from sqlalchemy import insert

    from medq.common.families.chest.spec import EnsembleSpec
    from medq.common.inference.study_paths import plain_hash as path_hash
    from medq.common.specs import INFER_KIND
    from medq.common.store.jobs import new_job_id
    from medq.common.store.models import Chunk, Job, Study

    rng = np.random.default_rng(seed)
    job_id = new_job_id()
    start = datetime(2026, 11, 3, 22, 0, tzinfo=timezone.utc)
    n_chunks = -(-n_studies // chunk)
    free = [start + timedelta(seconds=float(rng.uniform(0, 20))) for _ in range(workers)]
    lost_at = start + timedelta(seconds=0.5 * n_chunks * 64.0 / workers)  # half way through the night
    failed_chunk = n_chunks // 2
    chunks, spans = [], []
    for index in range(n_chunks):
        alive = [w for w in range(workers) if w != workers - 1 or free[w] < lost_at] or [0]
        w = min(alive, key=lambda k: free[k])
        seconds = float(rng.gamma(16.0, 4.0)) * (3 if rng.random() < 0.02 else 1)  # now and then a retry
        begin, end = free[w], free[w] + timedelta(seconds=seconds)
        free[w] = end + timedelta(seconds=float(rng.uniform(0.2, 2)))
        state = "failed" if index == failed_chunk else "succeeded"
        chunks.append({"job_id": job_id, "index": index, "state": state, "attempts": 3 if state == "failed" else 1,
                       "n_studies": min(chunk, n_studies - index * chunk), "worker": f"gpu{w}@night",
                       "device": "cuda:0", "started_at": begin, "finished_at": end, "updated_at": end,
                       "error": "gave up after 3 attempts (last: worker lost)" if state == "failed" else None})
        spans.append((begin, seconds))
    with store.session() as s:
        s.add(Job(id=job_id, kind=INFER_KIND, state="failed", priority="normal", window="22:00-06:00",
                  spec={"archive": "/exports/2026-11", "checkpoints": [f"/models/seed-{i}/best.pt" for i in range(5)],
                        "aggregation": "mean", "tta": "none", "chunk": chunk, "batch_size": 32},
                  plan={"family": EnsembleSpec.kind, "archive_kind": "folder"}, created_at=start, started_at=start,
                  finished_at=max(c["finished_at"] for c in chunks),
                  error=f"1 chunk(s) failed; `medq resume {job_id}` retries their studies"))
        s.execute(insert(Chunk), chunks)
    rows = []
    for i in range(n_studies):
        index = i // chunk
        begin, seconds = spans[index]
        row = {"job_id": job_id, "chunk_index": index, "path": f"2026-11/{i // 1000:03d}/{i:06d}.dcm",
               "state": "pending", "reason": None, "result": None, "qc_flag": None, "source_format": "dicom",
               "updated_at": start, **{f"{level}_uid": f"1.2.840.113619.2.55.3.{seed}.{k}.1699041600.{i}"  # a PACS's length
                                                 for k, level in enumerate(("study", "series", "sop"))}}
        row["path_hash"] = path_hash(row["path"])
        if index != failed_chunk:
            row["updated_at"] = begin + timedelta(seconds=seconds * ((i % chunk) // 32 + 1) * 32 / chunk)
            row.update(_outcome(rng))
        rows.append(row)
        if len(rows) >= BATCH:
            with store.session() as s:
                s.execute(insert(Study), rows)
            rows = []
    if rows:
        with store.session() as s:
            s.execute(insert(Study), rows)
    return job_id


def _outcome(rng) -> dict[str, Any]:
    draw = rng.random()
    if draw < 0.012:
        return {"state": "failed", "reason": FAILURES[min(int(rng.exponential(0.8)), len(FAILURES) - 1)]}
    if draw < 0.018:
        return {"state": "skipped", "reason": SKIPS[int(rng.random() < 0.3)]}
    size = int(rng.choice([2048, 2500, 3000]))
    spread = rng.gamma(2.0, 0.0033 * size, 15)  # about 2 % of the studies above the 3 % limit
    limit = 0.03 * size
    reasons = [f"ensemble spread above {limit:.1f} px at landmark {k}" for k in np.flatnonzero(spread > limit)]
    points = rng.uniform(0.1, 0.9, (15, 2)) * size
    return {"state": "done", "width": size, "height": size, "qc_flag": bool(reasons),
            "result": {"landmarks_px": points.tolist(), "landmarks_mm": (points * 0.143).tolist(),
                       "spread_px": spread.tolist(), "qc_reasons": reasons}}


def bare_sql_seconds(store, job_id: str) -> float:
    """The counts and GROUP BYs of the report and of `medq results --json`, drawing nothing."""
    from medq.common.families.chest.spec import EnsembleSpec
    from medq.common.families.registry import family
    from medq.common.report.inference import gather
    from medq.common.store.views import infer_view

    start = time.perf_counter()
    infer_view(store, job_id)
    gather(store, job_id, family(EnsembleSpec.kind).inference.report_distributions)
    return time.perf_counter() - start


def bare_count_seconds(store, job_id: str) -> float:
    """The smallest honest query: the studies of the job counted by state."""
    from sqlalchemy import func, select

    from medq.common.store.models import Study

    start = time.perf_counter()
    with store.session() as s:
        s.execute(select(Study.state, func.count()).where(Study.job_id == job_id).group_by(Study.state)).all()
    return time.perf_counter() - start


def run(url: str, root: Path, sizes: tuple[int, ...], seeds: int, test_images: int) -> dict[str, Any]:
    from medq.common.store.db import Store

    store = Store(url)
    store.ensure_schema()
    out: dict[str, Any] = {"store": store.engine.dialect.name}
    start = time.perf_counter()
    chest = chest_job(store, root, seeds, test_images)
    out["training"] = {"seeds": seeds, "test_images": test_images, "epochs_per_member": 40,
                       "setup_s": round(time.perf_counter() - start, 1)}
    render = render_in_process(url, chest, root / "reports")
    bare = bare_figures_seconds(render["figures"])
    out["training"].update({"render_s": round(render["seconds"], 2), "figures": render["figures"],
                            "html_kib": round(render["html_kib"]), "peak_rss_mib": round(render["peak_rss_mib"], 1),
                            "rss_before_render_mib": round(render["rss_before_mib"], 1),
                            "bare_matplotlib_same_figures_s": round(bare, 2),
                            "ratio_render_over_bare_matplotlib": round(render["seconds"] / bare, 2)})
    out["inference"] = []
    for n in sizes:
        start = time.perf_counter()
        job_id = inference_job(store, n)
        insert_s = time.perf_counter() - start
        render = render_in_process(url, job_id, root / "reports")
        traced = render_in_process(url, job_id, root / "reports", trace=True)
        sql = min(bare_sql_seconds(store, job_id) for _ in range(3))
        count = min(bare_count_seconds(store, job_id) for _ in range(3))
        out["inference"].append({
            "studies": n, "insert_s": round(insert_s, 1), "render_s": round(render["seconds"], 2),
            "peak_rss_mib": round(render["peak_rss_mib"], 1), "rss_before_render_mib": round(render["rss_before_mib"], 1),
            "render_rss_growth_mib": round(render["peak_rss_mib"] - render["rss_before_mib"], 1),
            "peak_reset": render["peak_reset"], "python_peak_mib": round(traced["python_peak_mib"], 1),
            "html_kib": round(render["html_kib"]), "report_sql_alone_s": round(sql, 3),
            "bare_count_by_state_s": round(count, 4), "ratio_render_over_report_sql": round(render["seconds"] / sql, 2),
            "ratio_render_over_bare_count": round(render["seconds"] / count, 1)})
    if len(out["inference"]) > 1:
        small, large = out["inference"][0], out["inference"][-1]
        out["peak_rss_growth_largest_vs_smallest_mib"] = round(large["peak_rss_mib"] - small["peak_rss_mib"], 1)
        out["render_time_largest_over_smallest"] = round(large["render_s"] / small["render_s"], 2)
    store.dispose()
    return out
