-- Portable between SQLite (local mode) and PostgreSQL (cluster): TEXT and BIGINT
-- only (both decode as i64 through sqlx Any); times are Unix seconds.

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- One row per consumed terminal token: the primary key makes consumption atomic.
CREATE TABLE used_jtis (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX used_jtis_expiry ON used_jtis (expires_at);

-- The session index the API needs. On a cluster the CommandSession stays the source of truth.
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    spec          TEXT NOT NULL,
    phase         TEXT NOT NULL,
    exit_code     BIGINT,
    reason        TEXT,
    message       TEXT,
    runner_addr   TEXT,
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX sessions_created ON sessions (created_at, id);
CREATE INDEX sessions_owner ON sessions (owner);

CREATE TABLE session_events (
    id         TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    at         BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    message    TEXT NOT NULL
);
CREATE INDEX session_events_session ON session_events (session_id, at);
