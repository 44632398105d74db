"""The Celery app, configured from medq's settings. `celery -A tasks.app worker` finds it here."""

from __future__ import annotations

from celery import Celery

from common.settings import load_settings
from tasks.config import celery_config


def make_app(settings=None) -> Celery:
    settings = settings or load_settings()
    app = Celery("medq")
    app.conf.update(celery_config(settings))
    app.conf.medq_settings = settings
    # Task modules: imported by workers, never by the CLI (it sends by name).
    app.conf.imports = ("tasks.landmarks", "tasks.infer", "tasks.bench")
    return app


app = make_app()


def app_for(settings) -> Celery:
    """The app for these settings: the module's own when they are the process's settings."""
    if settings == app.conf.medq_settings:
        return app
    return make_app(settings)


def _allow_loader_processes(**_) -> None:
    """Celery's pool processes are marked daemonic, and a daemonic process may not start
    children; inference decodes studies in DataLoader worker processes. The pool child is
    the one process that runs tasks, so it is safe to lift the mark there (the loader's
    workers watch their parent and exit with it)."""
    import multiprocessing

    multiprocessing.current_process()._config["daemon"] = False


from celery.signals import worker_process_init  # noqa: E402

worker_process_init.connect(_allow_loader_processes, weak=False)
