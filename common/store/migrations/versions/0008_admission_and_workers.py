"""admission of training members by the store: the workers registry and each member's admission

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'workers',
        sa.Column('name', sa.String(length=255), primary_key=True),
        sa.Column('queue', sa.String(length=255), nullable=False),
        sa.Column('launcher', sa.String(length=64), nullable=False),
        sa.Column('device', sa.String(length=16), nullable=False),
        sa.Column('seen_at', sa.DateTime(), nullable=False),
    )
    op.create_index('ix_workers_launcher', 'workers', ['launcher'])
    op.add_column('members', sa.Column('admission', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('members', sa.Column('admitted_to', sa.String(length=255), nullable=True))
    op.add_column('members', sa.Column('admitted_at', sa.DateTime(), nullable=True))
    op.add_column('members', sa.Column('borrowed', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('members', sa.Column('preempt_for', sa.String(length=16), nullable=True))
    op.create_index('ix_members_state', 'members', ['state'])


def downgrade() -> None:
    op.drop_index('ix_members_state', table_name='members')
    with op.batch_alter_table('members') as batch:
        batch.drop_column('preempt_for')
        batch.drop_column('borrowed')
        batch.drop_column('admitted_at')
        batch.drop_column('admitted_to')
        batch.drop_column('admission')
    op.drop_index('ix_workers_launcher', table_name='workers')
    op.drop_table('workers')
