-- Repositories, blobs, manifests, tags and upload sessions: the registry core.
-- Times are Unix seconds. Digests are stored in their text form (algorithm:hex).

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- Content-addressed blobs known to the store, whatever repository holds them.
CREATE TABLE blobs (
    digest      TEXT    PRIMARY KEY,
    size        INTEGER NOT NULL CHECK (size >= 0),
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- A blob is visible in a repository only through a link.
CREATE TABLE repository_blobs (
    repository_id INTEGER NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest        TEXT    NOT NULL REFERENCES blobs (digest),
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
) WITHOUT ROWID;
CREATE INDEX repository_blobs_digest ON repository_blobs (digest);

CREATE TABLE manifests (
    repository_id INTEGER NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest        TEXT    NOT NULL,
    media_type    TEXT    NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    body          BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repository_id, subject) WHERE subject IS NOT NULL;

-- What each manifest references (blobs and child manifests), for garbage collection.
CREATE TABLE manifest_references (
    repository_id   INTEGER NOT NULL,
    manifest_digest TEXT    NOT NULL,
    target_digest   TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('blob', 'manifest')),
    PRIMARY KEY (repository_id, manifest_digest, kind, target_digest),
    FOREIGN KEY (repository_id, manifest_digest) REFERENCES manifests (repository_id, digest) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX manifest_references_target ON manifest_references (target_digest);

CREATE TABLE tags (
    repository_id   INTEGER NOT NULL,
    name            TEXT    NOT NULL,
    manifest_digest TEXT    NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (repository_id, name),
    FOREIGN KEY (repository_id, manifest_digest) REFERENCES manifests (repository_id, digest) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX tags_manifest ON tags (repository_id, manifest_digest);

CREATE TABLE uploads (
    id          TEXT    PRIMARY KEY,
    repository  TEXT    NOT NULL,
    byte_offset INTEGER NOT NULL CHECK (byte_offset >= 0),
    hash_state  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX uploads_updated_at ON uploads (updated_at);
