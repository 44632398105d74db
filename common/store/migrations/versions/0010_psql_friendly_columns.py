"""columns a person queries with psql: no reserved words, timestamptz and jsonb on PostgreSQL

jobs.window -> run_window, chunks.index -> chunk_index; on PostgreSQL, every timestamp becomes
timestamptz (the stored values read as UTC) and every JSON column jsonb.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None
# A worker of the older medq would fail on the renamed columns, and on PostgreSQL write naive
# times into timestamptz: workers and submits do not take this step on their own (migrate.py).
breaking = True

# every timestamp and JSON column as of 0009 (a migration lists what it changes; it does not read the models)
TIMESTAMPS = {
    'jobs': ('eval_lease_expires_at', 'created_at', 'started_at', 'finished_at'),
    'workers': ('seen_at',),
    'chunks': ('lease_expires_at', 'started_at', 'finished_at', 'updated_at'),
    'members': ('lease_expires_at', 'started_at', 'finished_at', 'updated_at', 'preempt_requested_at', 'admitted_at'),
    'studies': ('updated_at',),
    'artifacts': ('created_at',),
    'attempts': ('started_at', 'ended_at'),
    'epochs': ('recorded_at',),
    'results': ('created_at',),
    'sends': ('updated_at',),
}
JSON_COLUMNS = {'jobs': ('spec', 'plan'), 'studies': ('result',), 'epochs': ('metrics', 'lrs'), 'results': ('metrics',)}


def _rename(table: str, old: str, new: str) -> None:
    # ALTER TABLE ... RENAME COLUMN in place, on SQLite (3.25+) as on PostgreSQL: a batch
    # migration would copy the table and drop the old one, and on SQLite dropping "jobs" with
    # foreign keys on deletes every member, chunk and study of every job (ON DELETE CASCADE).
    op.execute(f'ALTER TABLE {table} RENAME COLUMN "{old}" TO "{new}"')


def upgrade() -> None:
    _rename('jobs', 'window', 'run_window')
    _rename('chunks', 'index', 'chunk_index')  # its unique constraint (uq_chunks_job_id) follows the column
    if op.get_bind().dialect.name != 'postgresql':
        return  # SQLite keeps its text timestamps (UTC) and JSON text: it has no other types
    for table, columns in TIMESTAMPS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.DateTime(timezone=True), existing_type=sa.DateTime(),
                            postgresql_using=f"{column} AT TIME ZONE 'UTC'")
    for table, columns in JSON_COLUMNS.items():
        for column in columns:
            # jsonb refuses the NUL character that json keeps: it becomes U+FFFD
            op.alter_column(table, column, type_=postgresql.JSONB(), existing_type=sa.JSON(),
                            postgresql_using=f"replace({column}::text, '\\u0000', '\\ufffd')::jsonb")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        for table, columns in JSON_COLUMNS.items():
            for column in columns:
                op.alter_column(table, column, type_=sa.JSON(), existing_type=postgresql.JSONB(),
                                postgresql_using=f"{column}::json")
        for table, columns in TIMESTAMPS.items():
            for column in columns:
                op.alter_column(table, column, type_=sa.DateTime(), existing_type=sa.DateTime(timezone=True),
                                postgresql_using=f"{column} AT TIME ZONE 'UTC'")
    _rename('chunks', 'chunk_index', 'index')
    _rename('jobs', 'run_window', 'window')
