-- Starting an upload counts the open sessions of its principal and of its repository against
-- the limits (limits.max_uploads_per_principal, limits.max_uploads_per_repository).
CREATE INDEX uploads_principal ON uploads (principal);
CREATE INDEX uploads_repository ON uploads (repository);
