-- Secrets, templates, trigger tokens and schedules, and what sessions and the event log record
-- of them. Portable between SQLite and PostgreSQL, as the rest.

-- Secrets the API keeps itself (local mode): values sealed with XChaCha20-Poly1305 under the
-- key named by key_id, the secret's name bound in as associated data. On a cluster secrets are
-- Kubernetes Secrets and this table stays empty.
CREATE TABLE secrets (
    name       TEXT PRIMARY KEY,
    key_names  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE templates (
    name       TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    spec       TEXT NOT NULL,
    owner      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Trigger tokens: only a SHA-256 of the secret part is kept.
CREATE TABLE trigger_tokens (
    id           TEXT PRIMARY KEY,
    template     TEXT NOT NULL,
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    params       TEXT NOT NULL,
    owner        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX trigger_tokens_template ON trigger_tokens (template);

-- last_considered: the latest scheduled time started, skipped or missed (compare-and-set by
-- the scheduler, so two replicas never both act on one time); not_run: the latest skipped and
-- missed times with their reasons (JSON), written in the same compare-and-set.
CREATE TABLE schedules (
    name            TEXT PRIMARY KEY,
    uid             TEXT NOT NULL,
    spec            TEXT NOT NULL,
    owner           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    last_considered BIGINT NOT NULL,
    not_run         TEXT NOT NULL DEFAULT '[]'
);

-- Where a session came from (template, schedule, retry chain), as JSON, with the columns
-- queries filter on. retry_pending: its ending has yet to be weighed against its retry policy.
ALTER TABLE sessions ADD COLUMN origin TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sessions ADD COLUMN template TEXT;
ALTER TABLE sessions ADD COLUMN schedule TEXT;
ALTER TABLE sessions ADD COLUMN retry_pending BIGINT NOT NULL DEFAULT 0;
CREATE INDEX sessions_template ON sessions (template);
CREATE INDEX sessions_schedule ON sessions (schedule);

-- The event log: one monotonic sequence for every entry (from the feed's counter), and what
-- each concerns beyond a session. Entries about no session have session_id ''.
ALTER TABLE session_events ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE session_events ADD COLUMN template TEXT;
ALTER TABLE session_events ADD COLUMN schedule TEXT;
ALTER TABLE session_events ADD COLUMN actor TEXT;
CREATE INDEX session_events_seq ON session_events (seq);
