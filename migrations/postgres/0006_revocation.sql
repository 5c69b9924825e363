-- Revocation that takes effect at once: one epoch per revoked subject (`user:<name>`,
-- `robot:<name>`, `token:<id>`, `refresh:<id>`, `key:<kid>`), from one counter that only
-- grows; every replica polls for the epochs above the highest it has seen. Writers take
-- the table in SHARE ROW EXCLUSIVE mode, so epochs are handed out in commit order.
CREATE TABLE revocations (
    subject TEXT COLLATE "C" PRIMARY KEY,
    epoch   BIGINT NOT NULL UNIQUE
);

-- Refresh tokens handed out, so their owners and admins can list and revoke them one by one.
CREATE TABLE refresh_tokens (
    id           TEXT COLLATE "C" PRIMARY KEY,
    subject      TEXT COLLATE "C" NOT NULL,
    credential   TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    last_used_at BIGINT,
    revoked      BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_subject ON refresh_tokens (subject, created_at);

-- A retired signing key stays on record but no longer verifies (nor signs).
ALTER TABLE signing_keys ADD COLUMN retired_at BIGINT;
