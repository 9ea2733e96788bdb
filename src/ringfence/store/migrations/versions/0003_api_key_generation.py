"""API key generation counter: bumped with every change that can withdraw a key's access

Revision ID: 0003_api_key_generation
Revises: 0002_monitoring
Create Date: 2026-12-03 16:45:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0003_api_key_generation'
down_revision = '0002_monitoring'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('identity_api_key_generation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.execute("INSERT INTO identity_api_key_generation (id, value) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table('identity_api_key_generation')
