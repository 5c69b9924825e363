-- The request that ends an upload (finishing it under a digest, or discarding it) claims the
-- record first, so that of two replicas ending one session only one goes on: until when the
-- claim holds (Unix seconds), and the digest it finishes the upload as (NULL: a discard).
-- NULL until: unclaimed, as every upload recorded before.
ALTER TABLE uploads ADD COLUMN claimed_until BIGINT;
ALTER TABLE uploads ADD COLUMN claimed_digest TEXT COLLATE "C";
