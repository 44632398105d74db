"""`medq bench`: the benchmarks the README reports, each against its baseline in the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from medq.scheduler.local import LocalPool


@click.group()
def bench() -> None:
    """Benchmarks (not tests): queue overhead, training throughput, ensemble scaling, reports."""


def _timed_noops(send, n: int) -> dict:
    send(-1).get(timeout=60)  # warm-up: connections, worker pool
    start = time.perf_counter()
    for i in range(n):
        assert send(i).get(timeout=60) == i
    sequential = (time.perf_counter() - start) / n * 1000
    start = time.perf_counter()
    pending = [send(i) for i in range(n)]
    for p in pending:
        p.get(timeout=120)
    burst = n / (time.perf_counter() - start)
    return {"round_trip_ms": round(sequential, 2), "burst_tasks_per_s": round(burst, 1)}


@bench.command("report")
@click.option("--studies", "sizes", multiple=True, type=int, default=(10_000, 100_000), show_default=True,
              help="an inference job of this many study records (repeat the option)")
@click.option("--seeds", default=5, show_default=True, help="members of the training job")
@click.option("--test-images", default=300, show_default=True, help="test images of the training job")
@click.option("--database-url", default="", help="an empty store to fill  [default: a new SQLite file]")
def bench_report(sizes: tuple[int, ...], seeds: int, test_images: int, database_url: str) -> None:
    """Render time of a training report vs bare matplotlib drawing as many figures, and of
    inference reports vs their SQL alone, with each render's peak RSS (a fresh process each)."""
    from medq.scheduler.bench_report import run

    root = Path(tempfile.mkdtemp(prefix="medq-bench-report-"))
    url = database_url or f"sqlite:///{root / 'store.sqlite'}"
    click.echo(json.dumps(run(url, root, tuple(sizes), seeds, test_images), indent=2))


@bench.command("queue")
@click.option("--redis-url", default="redis://127.0.0.1:6379/15", show_default=True)
@click.option("--n", default=200, show_default=True)
def bench_queue(redis_url: str, n: int) -> None:
    """No-op round trip through medq's Celery configuration vs plain Celery, on Redis."""
    backend = redis_url.rsplit("/", 1)[0] + "/14"
    env = {**os.environ, "MEDQ_BROKER_URL": redis_url, "MEDQ_RESULT_BACKEND": backend,
           "MEDQ_HOME": tempfile.mkdtemp(prefix="medq-bench-"), "RAW_BROKER_URL": redis_url, "RAW_BACKEND_URL": backend}
    out: dict[str, dict] = {}
    # medq: its own worker command (prefork -c 1, acks late, prefetch 1, JSON, events).
    from medq.common.settings import load_settings
    from medq.workers.plan import plan_workers, worker_command

    settings = load_settings(env)
    plan = plan_workers([], 1)[0]
    medq_cmd = worker_command(plan, settings)
    raw_cmd = [sys.executable, "-m", "celery", "-A", "medq.tasks.raw_noop:raw", "worker", "--pool", "prefork",
               "--concurrency", "1", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"]
    for name, cmd in (("medq", medq_cmd), ("raw_celery", raw_cmd)):
        proc = subprocess.Popen(cmd, env={**env, **plan.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if name == "medq":
                from medq.tasks import names
                from medq.tasks.app import make_app

                app = make_app(settings)
                out[name] = _timed_noops(lambda i: app.send_task(names.NOOP, args=[i]), n)
            else:
                from celery import Celery

                raw = Celery("raw", broker=redis_url, backend=backend)
                out[name] = _timed_noops(lambda i: raw.send_task("raw.noop", args=[i]), n)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    out["ratio_round_trip_medq_over_raw"] = round(out["medq"]["round_trip_ms"] / out["raw_celery"]["round_trip_ms"], 3)
    click.echo(json.dumps(out, indent=2))


@bench.command("train")
@click.option("--images", default=64, show_default=True)
@click.option("--image-size", default=224, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--steps", default=24, show_default=True, help="measured steps (after warm-up)")
@click.option("--amp/--no-amp", default=True, show_default=True, help="mixed precision (CUDA only)")
@click.option("--loader-workers", default=0, show_default=True, help="DataLoader processes of the member")
def bench_train(images: int, image_size: int, batch_size: int, steps: int, amp: bool, loader_workers: int) -> None:
    """Images/s of one ensemble member vs a bare PyTorch loop, same model, batch and data."""
    from medq.common.families.chest.bench import bare_loop_throughput, member_throughput
    from medq.common.families.chest.synth import synth_chest
    from medq.common.training.kit import pick_device
    from medq.common.families.chest.spec import EnsembleSpec

    data_dir = Path(tempfile.mkdtemp(prefix="medq-bench-")) / "data"
    synth_chest(data_dir, n=images, seed=1)
    spec = EnsembleSpec(image_size=image_size, batch_size=batch_size, epochs_head=0, epochs=1, amp=amp,
                        loader_workers=loader_workers)
    bare = bare_loop_throughput(spec, data_dir, steps)
    member = member_throughput(spec, data_dir, steps)
    click.echo(json.dumps({"device": str(pick_device()), "amp": amp and pick_device().type == "cuda",
                           "image_size": image_size, "batch_size": batch_size, "loader_workers": loader_workers,
                           "bare_images_per_s": round(bare, 2), "member_images_per_s": round(member, 2),
                           "ratio": round(member / bare, 3)}, indent=2))


@bench.command("hrnet")
@click.option("--width", type=click.Choice(["w18s", "w18", "w32", "w48"]), default="w32", show_default=True)
@click.option("--image-size", "sizes", multiple=True, type=int, default=(256, 512), show_default=True)
@click.option("--images", default=24, show_default=True)
@click.option("--batch-size", default=6, show_default=True)
@click.option("--steps", default=8, show_default=True, help="measured steps (after warm-up)")
@click.option("--amp/--no-amp", default=True, show_default=True, help="mixed precision (CUDA only)")
@click.option("--channels-last/--no-channels-last", default=False, show_default=True)
@click.option("--loader-workers", default=0, show_default=True)
def bench_hrnet(width, sizes, images, batch_size, steps, amp, channels_last, loader_workers) -> None:
    """Images/s of one HRNet member vs a bare PyTorch loop, same model, batch and data."""
    from medq.common.families.ceph.bench import bare_hrnet_throughput, member_hrnet_throughput
    from medq.common.families.ceph.readers import read_isbi
    from medq.common.families.ceph.synth import synth_ceph
    from medq.common.training.kit import pick_device
    from medq.common.families.ceph.spec import HRNetSpec

    root = Path(tempfile.mkdtemp(prefix="medq-bench-hrnet-"))
    synth_ceph(root, n=images, seed=1, n_test=0)
    records = read_isbi(root).records
    rows = []
    for size in sizes:
        spec = HRNetSpec(width=width, image_size=size, batch_size=batch_size, amp=amp, channels_last=channels_last,
                         loader_workers=loader_workers)
        bare = bare_hrnet_throughput(spec, records, steps)
        member = member_hrnet_throughput(spec, records, steps)
        rows.append({"image_size": size, "bare_images_per_s": round(bare, 2), "member_images_per_s": round(member, 2),
                     "ratio": round(member / bare, 3)})
    device = pick_device()
    click.echo(json.dumps({"device": str(device), "width": width, "batch_size": batch_size,
                           "amp": amp and device.type == "cuda", "channels_last": channels_last,
                           "loader_workers": loader_workers, "sizes": rows}, indent=2))


@bench.command("ensemble")
@click.option("--seeds", default=4, show_default=True)
@click.option("--images", default=80, show_default=True)
@click.option("--image-size", default=96, show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option("--gpus", default="", help="GPU indices (e.g. 0,1): 1 GPU worker vs all of them, instead of 1 vs 2 CPU workers")
def bench_ensemble(seeds: int, images: int, image_size: int, epochs: int, gpus: str) -> None:
    """Wall time of an N-seed ensemble on 1 worker vs 2 workers (embedded broker unless set)."""
    from medq.common.families.chest.synth import synth_chest
    from medq.common.settings import load_settings
    from medq.common.families.chest.spec import EnsembleSpec
    from medq.common.store import open_store
    from medq.scheduler.local import local_workers, wait_for_job
    from medq.scheduler.submit import submit_training

    root = Path(tempfile.mkdtemp(prefix="medq-bench-"))
    data_dir = root / "data"
    synth_chest(data_dir, n=images, seed=1)
    spec = EnsembleSpec(epochs_head=1, epochs=epochs - 1, image_size=image_size, batch_size=16)
    out = {}
    for n_workers, pool in _pools(gpus):
        env = {"MEDQ_HOME": str(root / f"home{n_workers}")}
        settings = load_settings({**os.environ, **env})
        with local_workers(pool, root / f"logs{n_workers}", env, ready_timeout=300):
            start = time.perf_counter()
            job_id = submit_training(settings, spec.kind, spec, data_dir, list(range(seeds)))
            job = wait_for_job(open_store(settings), job_id, timeout=3600)
            out[f"{n_workers}_worker_s"] = round(time.perf_counter() - start, 1)
            out[f"{n_workers}_worker_state"] = job["state"]
    if len(out) > 2:
        n = max(n for n, _ in _pools(gpus))
        out[f"speedup_{n}_vs_1_workers"] = round(out["1_worker_s"] / out[f"{n}_worker_s"], 2)
    click.echo(json.dumps({"seeds": seeds, "images": images, "image_size": image_size, "epochs": epochs, **out},
                          indent=2))


def _pools(gpus: str) -> list[tuple[int, LocalPool]]:
    """The worker sets a bench compares: 1 vs 2 CPU workers, or 1 GPU vs every GPU listed."""
    from medq.scheduler.local import LocalPool

    indices = tuple(int(g) for g in gpus.split(",") if g.strip())
    if not indices:
        return [(1, LocalPool(cpu=1)), (2, LocalPool(cpu=2))]
    pools = [(1, LocalPool(gpus=indices[:1]))]
    return pools + [(len(indices), LocalPool(gpus=indices))] if len(indices) > 1 else pools


@bench.command("segment")
@click.option("--arch", default="unetplusplus", show_default=True)
@click.option("--encoder", default="efficientnet-b3", show_default=True)
@click.option("--image-size", default=384, show_default=True)
@click.option("--slices", default=24, show_default=True, help="training slices")
@click.option("--batch-size", default=6, show_default=True)
@click.option("--steps", default=6, show_default=True, help="measured training steps (after warm-up)")
@click.option("--amp/--no-amp", default=True, show_default=True, help="mixed precision (CUDA only)")
@click.option("--loader-workers", default=0, show_default=True, help="training data-loading processes")
@click.option("--volumes", default=6, show_default=True, help="CT volumes for the inference part")
@click.option("--volume-slices", default=16, show_default=True)
@click.option("--volume-size", default=512, show_default=True, help="slice side of the inference volumes")
@click.option("--infer-batch-size", default=16, show_default=True)
@click.option("--gpus", default="", help="GPU index (e.g. 0): a GPU worker instead of a CPU one for inference")
def bench_segment(arch, encoder, image_size, slices, batch_size, steps, amp, loader_workers, volumes, volume_slices,
                  volume_size, infer_batch_size, gpus) -> None:
    """Slices/s of segmentation training (one member vs a bare PyTorch loop, same model, batch
    and data) and of bulk inference (`medq submit infer` on .npy volumes vs a bare loop)."""
    import numpy as np

    from medq import common
    from medq.common.training.checkpoint import save_atomic
    from medq.common.training.kit import pick_device
    from medq.common.families.ct_lesions.bench import bare_seg_training, member_seg_training
    from medq.common.families.ct_lesions.data import read_medseg
    from medq.common.families.ct_lesions.model import build_segmenter
    from medq.common.families.ct_lesions.synth import synth_ct
    from medq.common.settings import load_settings
    from medq.common.families.ct_lesions.spec import SegmentSpec
    from medq.common.store import open_store
    from medq.scheduler.infer_plan import submit_infer
    from medq.scheduler.local import local_workers, wait_for_job

    root = Path(tempfile.mkdtemp(prefix="medq-bench-segment-"))
    spec = SegmentSpec(arch=arch, encoder=encoder, image_size=image_size, batch_size=batch_size, amp=amp,
                       loader_workers=loader_workers)
    synth_ct(root / "train", n=slices, seed=1, size=image_size)
    data = read_medseg(root / "train")
    indices = list(range(data.n_slices))
    device = pick_device()
    out: dict = {"device": str(device), "arch": arch, "encoder": encoder, "image_size": image_size,
                 "batch_size": batch_size, "amp": amp and device.type == "cuda"}
    bare = bare_seg_training(spec, data.sources, indices, steps)
    member = member_seg_training(spec, data.sources, indices, steps)
    out["training"] = {"bare_slices_per_s": round(bare, 2), "member_slices_per_s": round(member, 2),
                       "ratio": round(member / bare, 3)}

    synth_ct(root / "ct", n=volumes * volume_slices, seed=2, size=volume_size, slices_per_volume=volume_slices)
    hu = np.load(root / "ct" / "images_synth.npy", mmap_mode="r")
    archive = root / "archive"
    archive.mkdir()
    for v in range(volumes):
        np.save(archive / f"scan{v:03d}.npy", np.asarray(hu[v * volume_slices:(v + 1) * volume_slices, ..., 0]))
    checkpoint = root / "best.pt"
    model = build_segmenter(arch, encoder, 4)
    save_atomic({"model": model.state_dict(), "spec": spec.to_dict(), "epoch": 0, "hu": {"mean": -500.0, "std": 450.0},
                 "class_weights": [1.0] * 4, "code_version": common.__version__}, checkpoint)
    # the bare loop runs in a fresh process with the worker's environment (threads, device), so
    # both start cold: a process that has trained first has a warm allocator and ran the same
    # loop up to 1.6x faster here
    from medq.workers.plan import plan_workers

    gpu_list = [int(g) for g in gpus.split(",") if g.strip()][:1]
    worker_env = plan_workers(gpu_list, 0 if gpu_list else 1)[0].env
    code = ("import sys; from pathlib import Path; from medq.common.families.ct_lesions.bench import bare_seg_inference; "
            "print(bare_seg_inference(Path(sys.argv[1]), sorted(Path(sys.argv[2]).glob('*.npy')), int(sys.argv[3])))")
    done = subprocess.run([sys.executable, "-c", code, str(checkpoint), str(archive), str(infer_batch_size)],
                          env={**os.environ, **worker_env}, capture_output=True, text=True, check=True)
    bare_infer = float(done.stdout.strip().splitlines()[-1])
    (_, pool), = _pools(gpus)[:1]
    env = {"MEDQ_HOME": str(root / "home")}
    settings = load_settings({**os.environ, **env})
    with local_workers(pool, root / "logs", env, ready_timeout=300):
        start = time.perf_counter()
        job_id, _, _ = submit_infer(settings, archive, str(checkpoint), batch_size=infer_batch_size,
                                    out_dir=str(root / "out"))
        job = wait_for_job(open_store(settings), job_id, timeout=3600, poll=0.2)
        seconds = time.perf_counter() - start
    job_rate = volumes * volume_slices / seconds
    out["inference"] = {"volumes": volumes, "slices_per_volume": volume_slices, "slice_size": volume_size,
                        "batch_size": infer_batch_size, "bare_slices_per_s": round(bare_infer, 2),
                        "job_slices_per_s": round(job_rate, 2), "job_state": job["state"],
                        "ratio": round(job_rate / bare_infer, 3)}
    click.echo(json.dumps(out, indent=2))


@bench.command("pacs")
@click.option("--studies", default=12, show_default=True, help="CT studies (one series each)")
@click.option("--slices", default=16, show_default=True, help="slices per series (128 x 128, from CT_small)")
def bench_pacs(studies: int, slices: int) -> None:
    """Studies/s of `medq submit infer --pacs ... --send-to ...` (retrieve + segment + SEG/SR +
    send) against the same studies from a local folder, with the time of each PACS part alone.
    The PACS is a private Orthanc on a free loopback port (Debian: orthanc orthanc-dicomweb)."""
    from medq import common
    from medq.common.families.ct_lesions.model import build_segmenter
    from medq.common.families.ct_lesions.spec import SegmentSpec
    from medq.common.training.checkpoint import save_atomic
    from medq.scheduler.bench_pacs import run

    root = Path(tempfile.mkdtemp(prefix="medq-bench-pacs-"))
    spec = SegmentSpec(arch="unet", encoder="resnet18", image_size=128)
    checkpoint = root / "best.pt"
    save_atomic({"model": build_segmenter(spec.arch, spec.encoder, 4).state_dict(), "spec": spec.to_dict(), "epoch": 0,
                 "hu": {"mean": -500.0, "std": 450.0}, "class_weights": [1.0] * 4,
                 "code_version": common.__version__}, checkpoint)
    from medq.scheduler.orthanc import PrivateOrthanc

    pacs = PrivateOrthanc(root / "orthanc").start()
    try:
        click.echo(json.dumps(run(root, checkpoint, pacs, studies, slices, _pools("")[0][1]), indent=2))
    finally:
        pacs.stop()


def _untrained_checkpoint(path: Path, image_size: int) -> Path:
    """A member checkpoint in best.pt's format with random weights (throughput does not care)."""
    from medq import common
    from medq.common.training.checkpoint import save_atomic
    from medq.common.families.chest.model import build_model
    from medq.common.families.chest.spec import EnsembleSpec

    spec = EnsembleSpec(image_size=image_size)
    save_atomic({"model": build_model(spec).state_dict(), "spec": spec.to_dict(), "seed": 0, "epoch": 0,
                 "val_loss": 1.0, "val_error_px": None, "code_version": common.__version__}, path)
    return path


# Runs `medq ...` and prints the process's own peak resident memory (VmHWM, reset at exec, so
# the forking parent's memory is not counted) on standard error at exit.
_PEAK_RSS_WRAPPER = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]))\n"
    "sys.argv = ['medq', *sys.argv[1:]]\n"
    "from medq.scheduler.cli import main\n"
    "main()\n"
)


@bench.command("infer")
@click.option("--images", default=2000, show_default=True)
@click.option("--image-size", default=224, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--chunk", default=256, show_default=True)
@click.option("--loader-workers", type=click.IntRange(min=0), default=None,
              help="decoding processes per worker  [default: as `medq submit infer`]")
@click.option("--plan-files", default=100_000, show_default=True, help="files in the planning-memory archive")
@click.option("--gpus", default="", help="GPU indices (e.g. 0,1): GPU workers instead of 1 and 2 CPU workers")
def bench_infer(images: int, image_size: int, batch_size: int, chunk: int, loader_workers: int | None,
                plan_files: int, gpus: str) -> None:
    """End-to-end `medq submit infer` images/s vs a bare PyTorch loop; 1 vs 2 workers; the
    submitter's peak memory while planning a large archive."""
    from medq.common.families.chest.infer_bench import bare_inference_throughput
    from medq.common.families.chest.synth import synth_chest
    from medq.common.settings import load_settings
    from medq.common.store import open_store
    from medq.scheduler.infer_plan import submit_infer
    from medq.scheduler.local import local_workers, wait_for_job

    root = Path(tempfile.mkdtemp(prefix="medq-bench-infer-"))
    synth_chest(root / "data", n=images, seed=2)
    archive = root / "data" / "images"
    checkpoint = _untrained_checkpoint(root / "best.pt", image_size)
    out: dict = {"images": images, "image_size": image_size, "batch_size": batch_size, "chunk": chunk}
    big = root / "big"
    for i in range(plan_files):
        sub = big / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"{i:06d}.png").touch()
    env = {**os.environ, "MEDQ_HOME": str(root / "plan-home"), "MEDQ_BROKER_URL": ""}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS_WRAPPER, "submit", "infer", "--archive", str(big),
                           "--model", str(checkpoint), "--window", "00:00-00:01"],
                          env=env, capture_output=True, text=True)
    out["plan_files"] = plan_files
    out["plan_seconds"] = round(time.perf_counter() - start, 1)
    out["plan_exit_code"] = done.returncode
    peak = [line for line in done.stderr.splitlines() if line.startswith("VmHWM:")]
    out["plan_peak_rss_mib"] = round(int(peak[-1].split()[1]) / 1024, 1) if peak else None
    out["bare_images_per_s"] = round(bare_inference_throughput([checkpoint], sorted(archive.glob("*.png")),
                                                               batch_size), 2)
    out["bare_device"] = "cuda" if gpus else "cpu"
    for n_workers, pool in _pools(gpus):
        env = {"MEDQ_HOME": str(root / f"home{n_workers}")}
        settings = load_settings({**os.environ, **env})
        with local_workers(pool, root / f"logs{n_workers}", env, ready_timeout=300):
            start = time.perf_counter()
            job_id, _, _ = submit_infer(settings, archive, str(checkpoint), chunk=chunk, batch_size=batch_size,
                                        loader_workers=loader_workers)
            job = wait_for_job(open_store(settings), job_id, timeout=3600, poll=0.2)
            seconds = time.perf_counter() - start
        out[f"{n_workers}_worker_images_per_s"] = round(images / seconds, 2)
        out[f"{n_workers}_worker_state"] = job["state"]
    out["ratio_1_worker_vs_bare"] = round(out["1_worker_images_per_s"] / out["bare_images_per_s"], 3)
    n = max(n for n, _ in _pools(gpus))
    if n > 1:
        out[f"scaling_{n}_vs_1_workers"] = round(out[f"{n}_worker_images_per_s"] / out["1_worker_images_per_s"], 2)

    click.echo(json.dumps(out, indent=2))
