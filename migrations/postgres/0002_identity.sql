-- Users, projects, members, robots, access tokens, signing keys and the audit log.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT COLLATE "C" NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    admin         BOOLEAN NOT NULL DEFAULT FALSE,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT  NOT NULL
);

CREATE TABLE projects (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL UNIQUE,
    public     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT  NOT NULL
);

CREATE TABLE project_members (
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT   NOT NULL CHECK (role IN ('owner', 'maintainer', 'developer', 'reader')),
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members (user_id);

CREATE TABLE robots (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT COLLATE "C" NOT NULL UNIQUE,
    project_id   BIGINT REFERENCES projects (id) ON DELETE CASCADE,
    description  TEXT,
    secret_hash  TEXT    NOT NULL UNIQUE,
    grants       TEXT    NOT NULL,
    expires_at   BIGINT  NOT NULL,
    revoked      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT  NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX robots_project ON robots (project_id);

CREATE TABLE access_tokens (
    id           TEXT COLLATE "C" PRIMARY KEY,
    user_id      BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    description  TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL UNIQUE,
    expires_at   BIGINT,
    revoked      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT  NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX access_tokens_user ON access_tokens (user_id);

CREATE TABLE signing_keys (
    kid        TEXT COLLATE "C" PRIMARY KEY,
    pem        TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE audit_events (
    id         BIGSERIAL PRIMARY KEY,
    time       BIGINT NOT NULL,
    principal  TEXT   NOT NULL,
    action     TEXT   NOT NULL,
    target     TEXT   NOT NULL,
    result     TEXT   NOT NULL,
    reason     TEXT,
    client     TEXT
);
CREATE INDEX audit_events_time ON audit_events (time);
CREATE INDEX audit_events_principal ON audit_events (principal, id);

-- An upload session stays usable by whoever started it, even after their token expires.
ALTER TABLE uploads ADD COLUMN principal TEXT;
