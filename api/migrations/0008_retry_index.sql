-- The retry loop looks for sessions whose ending it has yet to weigh once a second: an index,
-- so that look is not a scan of every session.
CREATE INDEX sessions_retry_pending ON sessions (retry_pending);
