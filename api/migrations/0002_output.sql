-- The output store: every byte of a session's log by offset (docs/api.md, "Output").
-- BYTEA is PostgreSQL's binary type; SQLite stores the same bytes under any type name.

-- Segments of the log: `data` rows hold bytes [start_offset, end_offset); `gap` rows mark a
-- range the store does not hold (the runner's window overflowed, or the cap cut it out).
CREATE TABLE session_output (
    session_id   TEXT NOT NULL,
    start_offset BIGINT NOT NULL,
    end_offset   BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    at_ms        BIGINT NOT NULL,
    data         BYTEA,
    PRIMARY KEY (session_id, start_offset)
);

-- Where each session's stored log stands: the next offset expected, the bytes held, and
-- whether the runner said the log is complete.
CREATE TABLE session_output_state (
    session_id   TEXT PRIMARY KEY,
    end_offset   BIGINT NOT NULL,
    stored_bytes BIGINT NOT NULL,
    closed       BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- Terminal resizes, for recordings.
CREATE TABLE session_resizes (
    session_id TEXT NOT NULL,
    at_offset  BIGINT NOT NULL,
    at_ms      BIGINT NOT NULL,
    cols       BIGINT NOT NULL,
    rows       BIGINT NOT NULL,
    PRIMARY KEY (session_id, at_offset, at_ms)
);
