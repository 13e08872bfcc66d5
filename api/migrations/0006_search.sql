-- What a session list's `q` matches: the session's id and command, lowercased, so one LIKE
-- serves both databases. Rows written before this column are filled when the store opens.
ALTER TABLE sessions ADD COLUMN search_text TEXT NOT NULL DEFAULT '';
