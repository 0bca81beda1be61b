"""API processes hear every change to api_keys (LISTEN/NOTIFY), so they may cache key lookups

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:30:00
"""
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# persistence/api_key_cache.py listens on this channel and looks for this trigger by name
CHANNEL = 'ensemblehub_api_keys'
TRIGGER = 'ensemblehub_api_keys_changed'


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return  # SQLite (the embedded mode, one process): lookups are not cached
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
        """
    )
    # per statement, whatever the statement (the CLI, an UPDATE by hand, a TRUNCATE)
    op.execute(
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {TRIGGER}()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON api_keys")
    op.execute(f"DROP FUNCTION IF EXISTS {TRIGGER}()")
