"""counters of the events operations watch (lease reaps, redeliveries, re-sends, retries, preemptions)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'counters',
        sa.Column('name', sa.String(length=64), primary_key=True),
        sa.Column('kind', sa.String(length=16), primary_key=True),
        sa.Column('value', sa.BigInteger(), nullable=False, server_default='0'),
    )


def downgrade() -> None:
    op.drop_table('counters')
