"""The command line as a click user expects it: one error style (`error: ...`, exit 2) for
medq's errors and click's, examples in every submit command's --help, choices for names with a
fixed set, and shell completion of job ids."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medq.common.families.chest.spec import LANDMARK_LOSSES


def _medq(*args, home, extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDQ_")} | {"MEDQ_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "medq.scheduler", *args], capture_output=True, text=True,
                          env=env | (extra or {}), timeout=60)


@pytest.mark.parametrize("args, says", [
    (("results",), "error: Missing argument 'JOB'."),  # click's
    (("--bogus",), "error: No such option '--bogus'."),  # click's, at the top level
    (("results", "nosuchjob"), "error: no job 'nosuchjob'"),  # medq's
    (("submit", "ensemble", "--data", "x", "--loss", "huber"), "error: Invalid value for '--loss': 'huber' is not one of"),
    (("submit", "ensemble", "--data", "/no/such/folder"), "error: "),  # medq's SpecError / DataError
])
def test_every_error_reads_the_same_and_exits_2(tmp_path, args, says):
    done = _medq(*args, home=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr and "Error:" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_usage_error_shows_the_usage_line_first(tmp_path):
    done = _medq("results", home=tmp_path)
    assert done.stderr.startswith("Usage: medq results [OPTIONS] JOB"), done.stderr


@pytest.mark.parametrize("kind", ["train", "ensemble", "hrnet", "segment", "infer", "report"])
def test_every_submit_command_has_examples_in_its_help(kind, tmp_path):
    done = _medq("submit", kind, "--help", home=tmp_path)
    assert done.returncode == 0
    examples = done.stdout.split("Examples:", 1)[1].split("Options:", 1)[0]
    assert f"medq submit {kind if kind != 'train' else 'train'}" in examples, done.stdout


def test_names_with_a_fixed_set_are_choices_in_help(tmp_path):
    shown = _medq("submit", "ensemble", "--help", home=tmp_path).stdout.replace("\n", " ")
    assert "|".join(LANDMARK_LOSSES) in shown.replace(" ", "") or all(loss in shown for loss in LANDMARK_LOSSES)
    assert "resnet18|resnet34|resnet50" in shown.replace(" ", "")


def test_job_ids_complete_in_the_shell(tmp_path):
    from medq.common.settings import load_settings
    from medq.common.store import jobs, open_store

    store = open_store(load_settings({"MEDQ_HOME": str(tmp_path)}))
    made = [jobs.create_job(store, "ensemble", {}, {"split": {}}, [0], 1)[0] for _ in range(3)]
    prefix = made[0][:3]
    done = _medq(home=tmp_path, extra={"_MEDQ_COMPLETE": "bash_complete", "COMP_WORDS": f"medq status {prefix}",
                                       "COMP_CWORD": "2"})
    offered = [line.split(",", 1)[1] for line in done.stdout.splitlines()]
    assert made[0] in offered and all(job.startswith(prefix) for job in offered), done.stdout + done.stderr
    every = _medq(home=tmp_path, extra={"_MEDQ_COMPLETE": "bash_complete", "COMP_WORDS": "medq watch ", "COMP_CWORD": "2"})
    assert sorted(line.split(",", 1)[1] for line in every.stdout.splitlines()) == sorted(made)
