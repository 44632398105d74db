"""sends: each DICOM output of a study stored on a PACS, with the PACS's answer

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'sends',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('study_id', sa.Integer(), nullable=False),
        sa.Column('output', sa.String(length=16), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('sop_uid', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('answer', sa.Text(), nullable=True),
        sa.Column('updated_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_sends_job_id_jobs'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_sends_study_id_studies'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_sends')),
        sa.UniqueConstraint('study_id', 'output', name=op.f('uq_sends_study_id')),
    )
    op.create_index('ix_sends_job_id_state', 'sends', ['job_id', 'state'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_sends_job_id_state', table_name='sends')
    op.drop_table('sends')
