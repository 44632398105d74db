"""training history: one row per finished epoch of every member

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'epochs',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('member_id', sa.Integer(), nullable=False),
        sa.Column('epoch', sa.Integer(), nullable=False),
        sa.Column('phase', sa.String(length=16), nullable=True),
        sa.Column('train_loss', sa.Double(), nullable=True),
        sa.Column('val_loss', sa.Double(), nullable=True),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('lrs', sa.JSON(), nullable=False),
        sa.Column('images_per_s', sa.Double(), nullable=True),
        sa.Column('wall_s', sa.Double(), nullable=True),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('recorded_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_epochs_job_id_jobs'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('fk_epochs_member_id_members'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_epochs')),
        sa.UniqueConstraint('member_id', 'epoch', name=op.f('uq_epochs_member_id')),
    )
    op.create_index(op.f('ix_epochs_job_id'), 'epochs', ['job_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_epochs_job_id'), table_name='epochs')
    op.drop_table('epochs')
