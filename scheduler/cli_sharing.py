"""The options every submit command shares: --project and --priority (common/sharing/)."""

from __future__ import annotations

import functools

import click

from medq.common.errors import SpecError
from medq.common.settings import load_settings
from medq.common.sharing.projects import Placement, check_project, default_project
from medq.common.specs import PRIORITIES

PROJECT_HELP = "who the job is for, kept with the job and shown by medq status  [default: MEDQ_PROJECT, else your login name]"


def _project(value: str | None) -> str:
    try:
        return check_project(value) if value else default_project(load_settings().project)
    except SpecError as exc:
        raise click.BadParameter(str(exc).removeprefix("--project: "), param_hint="--project") from None


def project_option(command):
    """--project NAME, given to the command as ``project`` (checked, defaulted)."""
    @click.option("--project", "project", default=None, metavar="NAME", help=PROJECT_HELP)
    @functools.wraps(command)
    def wrapper(*args, project, **kwargs):
        return command(*args, project=_project(project), **kwargs)
    return wrapper


def placement_options(command):
    """--project and --priority, given to the command as one ``placement`` (a Placement)."""
    @click.option("--priority", type=click.Choice(PRIORITIES), default="normal", show_default=True,
                  help="high-priority inference waiting for a worker makes normal and low training yield it at "
                       "its next step; low-priority training yields first")
    @click.option("--project", "project", default=None, metavar="NAME", help=PROJECT_HELP)
    @functools.wraps(command)
    def wrapper(*args, project, priority, **kwargs):
        return command(*args, placement=Placement(_project(project), priority), **kwargs)
    return wrapper
