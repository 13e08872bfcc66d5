-- A create retried with the same Idempotency-Key (by the same API key) names the session the
-- first one made: a client that lost the answer, or an API that restarted mid-request, never
-- makes two. Rows go with their session.
CREATE TABLE idempotency_keys (
    owner      TEXT NOT NULL,
    idem_key   TEXT NOT NULL,
    session_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner, idem_key)
);
CREATE INDEX idempotency_keys_session ON idempotency_keys (session_id);
