"""Monitoring alerts carry the behavioural model's score and the features that drove it

Revision ID: 0004_models
Revises: 0003_api_key_generation
Create Date: 2026-12-04 15:45:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0004_models'
down_revision = '0003_api_key_generation'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('monitoring_alerts') as batch:
        batch.add_column(sa.Column('score', sa.BigInteger(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('features', sa.Text(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('monitoring_alerts') as batch:
        batch.drop_column('features')
        batch.drop_column('score')
