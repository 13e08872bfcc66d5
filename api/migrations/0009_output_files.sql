-- In local mode the bytes of stored output live in one append-only file per session and a data
-- row names where its bytes start in that file (`file_pos`; `data` is then NULL). The state
-- row keeps how far the file is written (`file_end`), so an append that never committed is
-- overwritten by the next one.
ALTER TABLE session_output ADD COLUMN file_pos BIGINT;
ALTER TABLE session_output_state ADD COLUMN file_end BIGINT NOT NULL DEFAULT 0;
