-- Where an upload's bytes are staged when blobs live in an object store (multipart upload id,
-- parts, a small tail object); empty for local disk. Opaque to the metadata store.
ALTER TABLE uploads ADD COLUMN storage_state BYTEA NOT NULL DEFAULT ''::bytea;
