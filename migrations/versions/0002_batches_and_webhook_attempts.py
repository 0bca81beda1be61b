"""batch cancelling time; webhook attempt details

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 05:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batches') as batch:
        batch.add_column(sa.Column('cancelling_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('webhook_deliveries') as batch:
        batch.add_column(sa.Column('response_body', sa.Text(), nullable=True))
        # existing rows were first attempts
        batch.add_column(sa.Column('trigger', sa.String(length=16), nullable=False, server_default='event'))
        batch.add_column(sa.Column('duration_ms', sa.Float(), nullable=True))
        batch.add_column(sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('started_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('webhook_deliveries') as batch:
        batch.alter_column('trigger', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries') as batch:
        batch.drop_column('started_at')
        batch.drop_column('scheduled_at')
        batch.drop_column('duration_ms')
        batch.drop_column('trigger')
        batch.drop_column('response_body')
    with op.batch_alter_table('batches') as batch:
        batch.drop_column('cancelling_at')
