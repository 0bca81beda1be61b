"""Workers record the members they hold and the queues they read (routing by member set)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 18:30:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.add_column('worker_heartbeats', sa.Column('members', JSON, nullable=True))
    op.add_column('worker_heartbeats', sa.Column('queues', JSON, nullable=True))


def downgrade() -> None:
    op.drop_column('worker_heartbeats', 'queues')
    op.drop_column('worker_heartbeats', 'members')
