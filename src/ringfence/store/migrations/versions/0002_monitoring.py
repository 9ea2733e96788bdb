"""monitoring schema: the event outbox, alerts, cases, case actions, consumer cursors

Revision ID: 0002_monitoring
Revises: 0001_identity
Create Date: 2026-12-03 16:45:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0002_monitoring'
down_revision = '0001_identity'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('monitoring_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=False),
    sa.Column('device', sa.String(length=256), nullable=False),
    sa.Column('at_ms', sa.BigInteger(), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('monitoring_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_monitoring_events_at_ms'), ['at_ms'], unique=False)

    op.create_table('monitoring_cases',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('severity', sa.String(length=8), nullable=False),
    sa.Column('assignee', sa.String(length=64), nullable=False),
    sa.Column('opened_at_ms', sa.BigInteger(), nullable=False),
    sa.Column('updated_at_ms', sa.BigInteger(), nullable=False),
    sa.Column('closed_reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('monitoring_cases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_monitoring_cases_account_id'), ['account_id'], unique=False)

    op.create_table('monitoring_alerts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('severity', sa.String(length=8), nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('explanation', sa.Text(), nullable=False),
    sa.Column('evidence', sa.Text(), nullable=False),
    sa.Column('at_ms', sa.BigInteger(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['monitoring_cases.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('monitoring_alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_monitoring_alerts_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_monitoring_alerts_case_id'), ['case_id'], unique=False)

    op.create_table('monitoring_case_actions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('staff_id', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=24), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('decision', sa.Text(), nullable=False),
    sa.Column('decision_nonce', sa.String(length=64), nullable=True),
    sa.Column('at_ms', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['monitoring_cases.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('decision_nonce')
    )
    with op.batch_alter_table('monitoring_case_actions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_monitoring_case_actions_case_id'), ['case_id'], unique=False)

    op.create_table('monitoring_cursor',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('position', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('monitoring_cursor')
    with op.batch_alter_table('monitoring_case_actions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_monitoring_case_actions_case_id'))
    op.drop_table('monitoring_case_actions')
    with op.batch_alter_table('monitoring_alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_monitoring_alerts_case_id'))
        batch_op.drop_index(batch_op.f('ix_monitoring_alerts_account_id'))
    op.drop_table('monitoring_alerts')
    with op.batch_alter_table('monitoring_cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_monitoring_cases_account_id'))
    op.drop_table('monitoring_cases')
    with op.batch_alter_table('monitoring_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_monitoring_events_at_ms'))
    op.drop_table('monitoring_events')
