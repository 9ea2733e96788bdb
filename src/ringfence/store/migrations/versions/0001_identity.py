"""identity schema: users, credentials, sessions, API keys, outbox, security events

Revision ID: 0001_identity
Revises: 
Create Date: 2026-11-26 09:19:19.945546
"""

from alembic import op
import sqlalchemy as sa


revision = '0001_identity'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('identity_login_throttle',
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('locked_until_s', sa.BigInteger(), nullable=False),
    sa.Column('last_failure_at_s', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key_hash')
    )
    op.create_table('identity_rate_limits',
    sa.Column('bucket', sa.String(length=128), nullable=False),
    sa.Column('window_start_s', sa.BigInteger(), nullable=False),
    sa.Column('hits', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('bucket', 'window_start_s')
    )
    op.create_table('identity_users',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=40), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('email_verified', sa.Boolean(), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('created_at_s', sa.BigInteger(), nullable=False),
    sa.Column('totp_secret_enc', sa.LargeBinary(), nullable=True),
    sa.Column('totp_enabled', sa.Boolean(), nullable=False),
    sa.Column('totp_last_step', sa.BigInteger(), nullable=False),
    sa.Column('mfa_failures', sa.Integer(), nullable=False),
    sa.Column('mfa_locked_until_s', sa.BigInteger(), nullable=False),
    sa.Column('anti_phishing_code', sa.String(length=32), nullable=True),
    sa.Column('pgp_public_key', sa.Text(), nullable=True),
    sa.Column('pgp_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('withdrawals_locked_until_s', sa.BigInteger(), nullable=False),
    sa.Column('frozen', sa.Boolean(), nullable=False),
    sa.Column('pending_email', sa.String(length=254), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id'),
    sa.UniqueConstraint('email')
    )
    op.create_table('identity_api_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('key_prefix', sa.String(length=12), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('secret_enc', sa.LargeBinary(), nullable=True),
    sa.Column('public_key', sa.LargeBinary(), nullable=True),
    sa.Column('scopes', sa.String(length=64), nullable=False),
    sa.Column('ip_allowlist', sa.Text(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('created_at_s', sa.BigInteger(), nullable=False),
    sa.Column('expires_at_s', sa.BigInteger(), nullable=True),
    sa.Column('revoked_at_s', sa.BigInteger(), nullable=True),
    sa.Column('last_used_at_s', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    with op.batch_alter_table('identity_api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_api_keys_user_id'), ['user_id'], unique=False)

    op.create_table('identity_email_tokens',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('expires_at_s', sa.BigInteger(), nullable=False),
    sa.Column('used_at_s', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('identity_freeze_tokens',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('expires_at_s', sa.BigInteger(), nullable=False),
    sa.Column('used_at_s', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('identity_known_devices',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('first_seen_at_s', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('user_id', 'fingerprint', name='uq_identity_known_devices_user_fp')
    )
    op.create_table('identity_outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('to_addr', sa.String(length=254), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('template', sa.String(length=40), nullable=False),
    sa.Column('encrypted', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at_s', sa.BigInteger(), nullable=False),
    sa.Column('last_error', sa.String(length=255), nullable=True),
    sa.Column('created_at_s', sa.BigInteger(), nullable=False),
    sa.Column('sent_at_s', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('identity_outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_outbox_next_attempt_at_s'), ['next_attempt_at_s'], unique=False)

    op.create_table('identity_recovery_codes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('used_at_s', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('identity_recovery_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_recovery_codes_user_id'), ['user_id'], unique=False)

    op.create_table('identity_secure_tickets',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('ciphertext', sa.Text(), nullable=False),
    sa.Column('created_at_s', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('identity_secure_tickets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_secure_tickets_user_id'), ['user_id'], unique=False)

    op.create_table('identity_security_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.String(length=512), nullable=False),
    sa.Column('at_s', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('identity_security_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_security_events_user_id'), ['user_id'], unique=False)

    op.create_table('identity_sessions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at_s', sa.BigInteger(), nullable=False),
    sa.Column('last_seen_at_s', sa.BigInteger(), nullable=False),
    sa.Column('expires_at_s', sa.BigInteger(), nullable=False),
    sa.Column('mfa_pending', sa.Boolean(), nullable=False),
    sa.Column('second_factor_at_s', sa.BigInteger(), nullable=True),
    sa.Column('revoked_at_s', sa.BigInteger(), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=False),
    sa.Column('user_agent', sa.String(length=256), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('identity_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_sessions_user_id'), ['user_id'], unique=False)

    op.create_table('identity_webauthn_challenges',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('challenge', sa.LargeBinary(), nullable=False),
    sa.Column('expires_at_s', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('identity_webauthn_challenges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_webauthn_challenges_user_id'), ['user_id'], unique=False)

    op.create_table('identity_webauthn_credentials',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('credential_id', sa.LargeBinary(), nullable=False),
    sa.Column('public_key', sa.LargeBinary(), nullable=False),
    sa.Column('sign_count', sa.BigInteger(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('created_at_s', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['identity_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('credential_id')
    )
    with op.batch_alter_table('identity_webauthn_credentials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_webauthn_credentials_user_id'), ['user_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('identity_webauthn_credentials', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_webauthn_credentials_user_id'))

    op.drop_table('identity_webauthn_credentials')
    with op.batch_alter_table('identity_webauthn_challenges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_webauthn_challenges_user_id'))

    op.drop_table('identity_webauthn_challenges')
    with op.batch_alter_table('identity_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_sessions_user_id'))

    op.drop_table('identity_sessions')
    with op.batch_alter_table('identity_security_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_security_events_user_id'))

    op.drop_table('identity_security_events')
    with op.batch_alter_table('identity_secure_tickets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_secure_tickets_user_id'))

    op.drop_table('identity_secure_tickets')
    with op.batch_alter_table('identity_recovery_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_recovery_codes_user_id'))

    op.drop_table('identity_recovery_codes')
    with op.batch_alter_table('identity_outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_outbox_next_attempt_at_s'))

    op.drop_table('identity_outbox')
    op.drop_table('identity_known_devices')
    op.drop_table('identity_freeze_tokens')
    op.drop_table('identity_email_tokens')
    with op.batch_alter_table('identity_api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_api_keys_user_id'))

    op.drop_table('identity_api_keys')
    op.drop_table('identity_users')
    op.drop_table('identity_rate_limits')
    op.drop_table('identity_login_throttle')
