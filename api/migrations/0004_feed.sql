-- The session feed (GET /api/sessions/feed): every write to a session takes the next number of
-- one counter inside its transaction. The counter's row lock is held to the commit, so the
-- numbers follow commit order and a reader that resumes after the last number it saw misses
-- nothing.
CREATE TABLE session_feed_seq (
    id    INTEGER PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO session_feed_seq (id, value) VALUES (1, 0);
ALTER TABLE sessions ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX sessions_change_seq ON sessions (change_seq);
