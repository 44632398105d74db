"""The Celery settings and process model that avoid the traps of long GPU jobs on Redis."""

import subprocess
import sys

from medq.common.settings import load_settings
from medq.tasks import names
from medq.tasks.config import celery_config
from medq.workers.plan import plan_workers, worker_command


def test_celery_settings_for_hour_long_jobs():
    conf = celery_config(load_settings({"MEDQ_BROKER_URL": "redis://127.0.0.1:6379/0",
                                        "MEDQ_VISIBILITY_TIMEOUT": "200000"}))
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 200000
    assert conf["task_ignore_result"] and conf["result_backend"] is None
    assert conf["worker_send_task_events"]
    assert conf["task_routes"][names.TRAIN_MEMBER]["queue"] == names.GPU_QUEUE


def test_redis_password_setting_reaches_the_broker_url():
    conf = celery_config(load_settings({"MEDQ_BROKER_URL": "redis://10.0.0.5:6379/0", "MEDQ_REDIS_PASSWORD": "pw"}))
    assert conf["broker_url"] == "redis://:pw@10.0.0.5:6379/0"


def test_one_worker_per_gpu_pinned_by_cuda_visible_devices():
    plans = plan_workers([0, 3], 0, host="node7")
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0", "3"]
    assert all(p.env["MEDQ_DEVICE"] == "cuda:0" for p in plans)
    own = plans[1].own_queue
    assert own == "w.gpu3@node7" and own == f"w.{plans[1].nodename}"
    assert plans[1].queues == ("infer.high", "report", own, "gpu", "infer.normal", "infer.low")
    assert len({p.own_queue for p in plans}) == 2  # the dispatcher's way to one worker
    cmd = worker_command(plans[1], load_settings({}))
    assert cmd[cmd.index("--concurrency") + 1] == "1"
    assert cmd[cmd.index("--prefetch-multiplier") + 1] == "1"
    assert cmd[cmd.index("--pool") + 1] == "prefork"


def test_cpu_workers_take_training_jobs_and_share_the_cores():
    plans = plan_workers([], 2, host="laptop")
    assert [p.label for p in plans] == ["cpu0", "cpu1"]
    assert all("gpu" in p.queues and "cpu" in p.queues for p in plans)
    assert all(p.env["CUDA_VISIBLE_DEVICES"] == "" for p in plans)


def _imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_cli_and_the_worker_parent_never_import_torch():
    modules = _imported_after("from medq.scheduler.cli import main\nimport medq.tasks.app, medq.tasks.train, medq.workers.supervisor")
    assert "torch" not in modules and "medq.tasks.train" in modules


def test_common_store_and_settings_import_neither_torch_nor_celery_nor_click():
    modules = _imported_after("import medq.common.store.jobs, medq.common.store.views, medq.common.settings")
    assert not {"torch", "celery", "click"} & modules


def test_medq_help_is_fast_and_torch_free():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "medq.scheduler", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "submit" in out.stdout
    assert "| torch" not in out.stderr


def _send_at_once(home: str, barrier, errors) -> None:
    import os

    os.environ["MEDQ_HOME"] = home
    os.environ.pop("MEDQ_BROKER_URL", None)
    from medq.tasks.app import make_app
    from medq.tasks.send import send_chunk

    app = make_app()
    barrier.wait()
    try:
        send_chunk(app, 1, "normal")
    except Exception as exc:  # reported to the test, which names it
        errors.put(f"{type(exc).__name__}: {exc}")


def test_processes_declaring_one_queue_at_once_on_a_fresh_embedded_broker_all_succeed(tmp_path):
    """`medq demo` on a fresh machine: the submitter and the new workers create the broker's
    queue rows at the same moment; none of them may fail on the unique queue name."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_send_at_once, args=(str(tmp_path), barrier, errors)) for _ in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    failures = [errors.get() for _ in range(errors.qsize())]
    assert failures == [] and [p.exitcode for p in procs] == [0] * 6

    from medq.tasks.app import make_app
    from medq.tasks.send import queue_depth

    from medq.common.settings import load_settings

    settings = load_settings({"MEDQ_HOME": str(tmp_path)})
    assert queue_depth(make_app(settings), "infer.normal") == 6


def test_an_evaluation_queued_by_an_older_medq_still_runs():
    """Evaluations were sent as `medq.evaluate_ensemble` before every family shared one task:
    a worker after the upgrade still knows that name, runs the same evaluation and routes it
    the same way; new evaluations go out under `medq.evaluate_job`."""
    from medq.tasks.app import app
    from medq.tasks.train import evaluate_ensemble, evaluate_job

    app.loader.import_default_modules()
    for name, task in ((names.EVALUATE_ENSEMBLE, evaluate_ensemble), (names.EVALUATE_JOB, evaluate_job)):
        assert app.tasks[name].name == task.name == name and app.tasks[name].run.__module__ == "medq.tasks.train"
    assert evaluate_ensemble.run.__code__.co_names == evaluate_job.run.__code__.co_names  # both call _evaluate
    routes = celery_config(load_settings({}))["task_routes"]
    assert routes[names.EVALUATE_ENSEMBLE] == routes[names.EVALUATE_JOB] == {"queue": names.GPU_QUEUE}
    sent = []

    class App:
        def send_task(self, name, args):
            sent.append((name, args))

    from medq.tasks.send import send_evaluation

    send_evaluation(App(), "job1")
    assert sent == [(names.EVALUATE_JOB, ["job1"])]


def test_the_registry_and_every_family_interface_import_no_torch():
    modules = _imported_after("from medq.common.families.registry import families\n"
                              "[(f.inference, f.member_metric) for f in families()]")
    assert "torch" not in modules and "medq.common.families.ct_lesions.infer" in modules
