-- Users, projects, members, robots, access tokens, signing keys and the audit log.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    admin         INTEGER NOT NULL DEFAULT 0,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE projects (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    public     INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE project_members (
    project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT    NOT NULL CHECK (role IN ('owner', 'maintainer', 'developer', 'reader')),
    PRIMARY KEY (project_id, user_id)
) WITHOUT ROWID;

CREATE TABLE robots (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    project_id   INTEGER REFERENCES projects (id) ON DELETE CASCADE,
    description  TEXT,
    secret_hash  TEXT    NOT NULL UNIQUE,
    grants       TEXT    NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked      INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);

CREATE TABLE access_tokens (
    id           TEXT    PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    description  TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL UNIQUE,
    expires_at   INTEGER,
    revoked      INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE INDEX access_tokens_user ON access_tokens (user_id);

CREATE TABLE signing_keys (
    kid        TEXT    PRIMARY KEY,
    pem        TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY,
    time       INTEGER NOT NULL,
    principal  TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    result     TEXT    NOT NULL,
    reason     TEXT,
    client     TEXT
);
CREATE INDEX audit_events_time ON audit_events (time);
CREATE INDEX audit_events_principal ON audit_events (principal, id);

-- An upload session stays usable by whoever started it, even after their token expires.
ALTER TABLE uploads ADD COLUMN principal TEXT;
