-- Console logins: an API key exchanged for an HttpOnly cookie (docs/api.md, "Console login").
-- Only a SHA-256 of the cookie's secret is kept; each request checks the key behind it again,
-- so revoking or demoting the key acts on its logins at once.
CREATE TABLE console_sessions (
    secret_hash TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL,
    csrf_token  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX console_sessions_key ON console_sessions (key_id);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
