"""The results store: SQLAlchemy 2 models, sessions, migrations and the job operations.

Torch-free and celery-free. SQLite by default, any SQLAlchemy URL (PostgreSQL) by setting.
"""

from medq.common.store.db import Store, open_store
from medq.common.store.models import Artifact, Attempt, Job, Member, Result, State

__all__ = ["Store", "open_store", "Job", "Member", "Attempt", "Result", "Artifact", "State"]
