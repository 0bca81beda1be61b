"""OpenAI Files and Batches (files, openai_batches); cluster-wide metric counters

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 09:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'files',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('purpose', sa.String(length=32), nullable=False),
        sa.Column('filename', sa.String(length=255), nullable=False),
        sa.Column('bytes', sa.Integer(), nullable=False),
        sa.Column('lines', sa.Integer(), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=False),
        sa.Column('tenant', sa.String(length=128), nullable=True),
        sa.Column('batch_id', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_files_tenant', 'files', ['tenant'])
    op.create_index('ix_files_batch_id', 'files', ['batch_id'])
    op.create_table(
        'openai_batches',
        sa.Column('batch_id', sa.String(length=64), nullable=False),
        sa.Column('input_file_id', sa.String(length=64), nullable=False),
        sa.Column('endpoint', sa.String(length=64), nullable=False),
        sa.Column('completion_window', sa.String(length=16), nullable=False),
        sa.Column('output_file_id', sa.String(length=64), nullable=False),
        sa.Column('error_file_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id']),
        sa.ForeignKeyConstraint(['input_file_id'], ['files.id']),
        sa.PrimaryKeyConstraint('batch_id'),
        sa.UniqueConstraint('output_file_id'),
        sa.UniqueConstraint('error_file_id'),
    )
    op.create_index('ix_openai_batches_input_file_id', 'openai_batches', ['input_file_id'])
    op.create_table(
        'metric_counters',
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('labels', sa.String(length=512), nullable=False),
        sa.Column('value', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('name', 'labels'),
    )
    # jobs that ended before this migration: the final-state counters start exact
    op.execute(
        "INSERT INTO metric_counters (name, labels, value) "
        "SELECT 'jobs_finished', '{\"state\":\"' || status || '\"}', COUNT(*) FROM jobs "
        "WHERE status IN ('succeeded', 'failed', 'cancelled') GROUP BY status"
    )


def downgrade() -> None:
    op.drop_table('metric_counters')
    op.drop_index('ix_openai_batches_input_file_id', table_name='openai_batches')
    op.drop_table('openai_batches')
    op.drop_index('ix_files_batch_id', table_name='files')
    op.drop_index('ix_files_tenant', table_name='files')
    op.drop_table('files')
