"""The user's language: pages and e-mails in it (docs/i18n.md)

Revision ID: 0005_i18n
Revises: 0004_models
Create Date: 2026-12-04 16:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005_i18n'
down_revision = '0004_models'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('identity_users') as batch:
        batch.add_column(sa.Column('locale', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('identity_users') as batch:
        batch.drop_column('locale')
