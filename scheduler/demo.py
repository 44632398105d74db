"""`medq demo`: the whole product on one machine with no server, in a few minutes."""

from __future__ import annotations

import time


from medq.common.settings import Settings
from medq.common.families.chest.spec import EnsembleSpec
from medq.common.store import open_store
from medq.common.store.views import job_results
from medq.scheduler.local import LocalPool, local_workers
from medq.scheduler.render import console as make_console, print_results
from medq.scheduler.submit import submit_training
from medq.scheduler.watch import watch_job


def run_demo(settings: Settings, seeds: int, pool: LocalPool, n_images: int, epochs: int, image_size: int) -> int:
    console = make_console()
    for key, value in settings.describe().items():
        console.print(f"[dim]{key}: {value}[/]")
    data_dir = settings.home / f"demo-data-{n_images}"
    if not (data_dir / "landmarks.csv").exists():
        from medq.common.families.chest.synth import synth_chest

        console.print(f"making {n_images} synthetic chest radiographs in {data_dir}")
        synth_chest(data_dir, n=n_images, seed=1)
    # No ImageNet weights on a fresh machine: a randomly initialised backbone needs the larger
    # learning rates the pretrained recipe (2e-5 / 2e-4) would not use.
    spec = EnsembleSpec(epochs_head=1, epochs=max(1, epochs - 1), batch_size=8, image_size=image_size, patience=epochs,
                        lr_head=1e-3, lr_finetune_backbone=1e-3, lr_finetune_head=1e-3)
    started = time.monotonic()
    with local_workers(pool, settings.home / "logs"):
        job_id = submit_training(settings, spec.kind, spec, data_dir, list(range(seeds)))
        console.print(f"submitted job [bold]{job_id}[/]: {seeds} seeds on {pool.describe()} "
                      f"(logs in {settings.home / 'logs'})")
        store = open_store(settings)
        state = watch_job(store, job_id, console)
        print_results(console, job_results(store, job_id))
    console.print(f"job {job_id} {state} in {time.monotonic() - started:.0f}s; "
                  f"`medq results {job_id} --json` prints every metric")
    return 0 if state == "succeeded" else 1
