"""The Celery app, configured from medq's settings. `celery -A medq.tasks.app worker` finds it here."""

from __future__ import annotations

import logging

from celery import Celery

from medq.common.settings import load_settings
from medq.tasks import names
from medq.tasks.config import celery_config


def make_app(settings=None) -> Celery:
    settings = settings or load_settings()
    app = Celery("medq")
    app.conf.update(celery_config(settings))
    app.conf.medq_settings = settings
    # Task modules: imported by workers, never by the CLI (it sends by name).
    app.conf.imports = ("medq.tasks.train", "medq.tasks.infer", "medq.tasks.report", "medq.tasks.bench")
    return app


app = make_app()


def app_for(settings) -> Celery:
    """The app for these settings: the module's own when they are the process's settings."""
    if settings == app.conf.medq_settings:
        return app
    return make_app(settings)


def _prepare_pool_process(**_) -> None:
    """Celery's pool processes are marked daemonic, and a daemonic process may not start
    children; inference decodes studies in DataLoader worker processes. The pool child is
    the one process that runs tasks, so it is safe to lift the mark there (the loader's
    workers watch their parent and exit with it)."""
    import multiprocessing

    multiprocessing.current_process()._config["daemon"] = False
    # Import the engines once per pool process, at start-up rather than inside the first task
    # (importing torch does not initialise CUDA; the parent still never imports it).
    import importlib

    import medq.common.inference.chunk  # noqa: F401  (torch, the DataLoader, the chunk loop)
    from medq.common.families.registry import families

    for family in families():
        for module in family.engine_modules:
            importlib.import_module(module)

    settings = load_settings()
    if settings.device.startswith("cuda"):
        import torch

        torch.cuda.init()  # the context is made now, not inside the first task
    logging.getLogger("medq.worker").info("%s on %s", names.POOL_READY, settings.device)


from celery.signals import worker_process_init  # noqa: E402

worker_process_init.connect(_prepare_pool_process, weak=False)


def _scrub_worker_logs(logger=None, **_) -> None:
    """Every handler Celery sets up masks medq's secrets (passwords in URLs, the Redis and PACS
    passwords) in messages and tracebacks (common/secrets.py)."""
    from medq.common.secrets import install_log_scrubbing

    install_log_scrubbing(load_settings(), logger)


from celery.signals import after_setup_logger, after_setup_task_logger  # noqa: E402

after_setup_logger.connect(_scrub_worker_logs, weak=False)
after_setup_task_logger.connect(_scrub_worker_logs, weak=False)


def _censored_conf(state, with_defaults=False, **kwargs):
    """`celery inspect conf` (and Flower's worker "Config" tab), with Celery's own censoring of
    passwords in URLs and of secret-looking keys (its built-in command shows them raw)."""
    from celery.utils.saferepr import saferepr
    from celery.utils.serialization import jsonify

    return jsonify(state.app.conf.table(with_defaults=with_defaults, censored=True),
                   keyfilter=lambda key: isinstance(key, str) and not key.startswith("__"),
                   unknown_type_filter=saferepr)


from celery.utils.serialization import strtobool  # noqa: E402
from celery.worker.control import inspect_command  # noqa: E402

inspect_command(name="conf", alias="dump_conf", signature="[include_defaults=False]",
                args=[("with_defaults", strtobool)])(_censored_conf)
