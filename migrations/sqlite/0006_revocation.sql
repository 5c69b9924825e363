-- Revocation that takes effect at once: one epoch per revoked subject (`user:<name>`,
-- `robot:<name>`, `token:<id>`, `refresh:<id>`, `key:<kid>`), from one counter that only
-- grows; every replica polls for the epochs above the highest it has seen.
CREATE TABLE revocations (
    subject TEXT    PRIMARY KEY,
    epoch   INTEGER NOT NULL UNIQUE
);

-- Refresh tokens handed out, so their owners and admins can list and revoke them one by one.
CREATE TABLE refresh_tokens (
    id           TEXT    PRIMARY KEY,
    subject      TEXT    NOT NULL,
    credential   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_subject ON refresh_tokens (subject, created_at);

-- A retired signing key stays on record but no longer verifies (nor signs).
ALTER TABLE signing_keys ADD COLUMN retired_at INTEGER;
