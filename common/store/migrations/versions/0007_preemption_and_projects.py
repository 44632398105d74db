"""preemption of training members (their count and a pending request) and the job's project

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('members', sa.Column('preemptions', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('members', sa.Column('preempt_requested_at', sa.DateTime(), nullable=True))
    op.add_column('members', sa.Column('preempt_reason', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('project', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('project')
    with op.batch_alter_table('members') as batch:
        batch.drop_column('preempt_reason')
        batch.drop_column('preempt_requested_at')
        batch.drop_column('preemptions')
