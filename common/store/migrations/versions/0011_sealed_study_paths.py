"""studies.sealed_path: the archive path encrypted where studies.path is its pseudonym (MEDQ_STUDY_PATHS)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None
# A worker of the older medq would read a pseudonym as the file's path and fail the study for
# good: workers and submits do not take this step on their own (migrate.py); stop them first.
breaking = True


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sealed_path', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('sealed_path')
