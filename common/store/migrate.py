"""Alembic migrations, run programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from medq.common.store.models import SCHEMA_HEAD as HEAD  # noqa: F401  (the schema head, for callers)

if TYPE_CHECKING:  # db.py runs the migrations on first use; this module needs only the type
    from medq.common.store.db import Store

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def script_head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(store: "Store", revision: str = "head") -> None:
    config = alembic_config()
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
