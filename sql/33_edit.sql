-- dlq_edit: fix the payload of a pending or review message before replay;
-- the old payload stays in the audit trail.  Refusals change nothing.
\set VERBOSITY default
SET client_min_messages = warning;

CREATE ROLE edit_op LOGIN IN ROLE dlq_operator;
CREATE ROLE edit_reader LOGIN IN ROLE dlq_reader;
CREATE ROLE edit_writer LOGIN IN ROLE dlq_writer;
CREATE ROLE edit_nobody LOGIN;

SELECT (dlq_configure('edit_q', require_listener => false, max_attempts => 1)).queue;
SELECT dlq_store('edit_q', '{"n": 1, "amount": "12,50"}', 'invalid input syntax for type numeric',
                 sqlstate => '22P02') AS m1 \gset
SELECT dlq_store('edit_q', '{"n": 2}', 'e') AS m2 \gset

-- What a refused call must leave alone: payloads, statuses and events.
-- edit_try(stmt): the error of stmt (ids and OIDs as N, so that this file
-- runs in any order), and whether the state stayed as it was.
CREATE FUNCTION dlq_test.edit_state() RETURNS text
LANGUAGE sql SECURITY DEFINER AS $$
    SELECT concat_ws(' ',
        (SELECT md5(string_agg(row(m.message_id, m.status, m.payload, m.attempts)::text, ',' ORDER BY m.message_id))
           FROM dlq.messages m WHERE m.queue LIKE 'edit%'),
        (SELECT count(*) FROM dlq.events WHERE queue LIKE 'edit%'))
$$;
CREATE FUNCTION dlq_test.edit_try(stmt text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    before text := dlq_test.edit_state();
    result text := regexp_replace(dlq_test.err(stmt), '(message|OID) -?[0-9]+', '\1 N', 'g');
BEGIN
    RETURN result || CASE WHEN dlq_test.edit_state() = before THEN '' ELSE E'\nCHANGED STATE' END;
END $$;
GRANT EXECUTE ON FUNCTION dlq_test.edit_try(text), dlq_test.edit_state() TO PUBLIC;

-- A pending message: the new payload, returned as dlq.message, and an
-- "edited" event with the old payload and the note.
SELECT message_id = :m1 AS same_message, status, payload, attempts
  FROM dlq_edit(:m1, '{"n": 1, "amount": 12.50}', 'decimal comma fixed by hand');
SELECT payload FROM dlq.messages WHERE message_id = :m1;
SELECT kind, actor, message_count, message_ids = ARRAY[:m1::bigint] AS names_it, detail,
       request_id IS NOT NULL AS has_request
  FROM dlq.events WHERE queue = 'edit_q' AND kind = 'edited';
-- The note is optional; a second edit keeps the first edit's payload as old.
SELECT payload FROM dlq_edit(:m1, '{"n": 1, "amount": 12.5}');
SELECT detail FROM dlq.events WHERE queue = 'edit_q' AND kind = 'edited' ORDER BY event_id;
-- dlq_history shows the edits.
SELECT kind, detail->'old_payload' AS old_payload, attempt FROM dlq_history(:m1);

-- The replay hands out the new payload; a replaying message cannot be edited.
SELECT dlq_reprocess(ARRAY[:m1::bigint]) ->> 'notified' AS notified;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"n": 1}')$$, :m1));
-- A review message can (the replay failed, attempts used up).
SELECT dlq_nack(:m1, 'still rejected') AS status;
SELECT status, payload FROM dlq_edit(:m1, '{"n": 1, "amount": 12.5, "currency": "EUR"}', 'currency was missing');
-- Resolved, expired and archived ones cannot.
SELECT dlq_resolve(ARRAY[:m1::bigint]) ->> 'resolved' AS resolved;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"n": 1}')$$, :m1));
SELECT dlq_store('edit_q', '{"n": 3}', 'e') AS m3 \gset
UPDATE dlq.messages SET expires_at = now() - interval '1 second' WHERE message_id = :m3;
SELECT dlq.worker_expire(10, 'edit test', 'edit_q') AS expired;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"n": 3}')$$, :m3));
SELECT dlq_store('edit_q', '{"n": 4}', 'e') AS m4 \gset
UPDATE dlq.messages SET status = 'archived'::text::dlq.status WHERE message_id = :m4;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"n": 4}')$$, :m4));
DELETE FROM dlq.messages WHERE message_id = :m4;

-- Unknown message 02000; NULLs 22004; sizes 54000.
SELECT dlq_test.edit_try($$SELECT dlq_edit(-1, '{}')$$);
SELECT dlq_test.edit_try($$SELECT dlq_edit(NULL, '{}')$$);
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, NULL)$$, :m2));
SET dlq.max_payload_bytes = 1024;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, jsonb_build_object('x', repeat('x', 1024)))$$, :m2));
RESET dlq.max_payload_bytes;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{}', repeat('n', 54001))$$, :m2));
-- Any JSON value is a payload, as in dlq_store (JSON null too: it is not NULL).
SELECT payload FROM dlq_edit(:m2, 'null');
SELECT payload FROM dlq_edit(:m2, '[1, "two"]');
SELECT payload FROM dlq_edit(:m2, '"just a string"', repeat('n', 54000));

-- Privileges: operators only.
SET ROLE edit_reader;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"n": 2}')$$, :m2));
SET ROLE edit_writer;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"n": 2}')$$, :m2));
SET ROLE edit_nobody;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"n": 2}')$$, :m2));
SET ROLE edit_op;
SELECT payload FROM dlq_edit(:m2, '{"n": 2}', 'by an operator');
RESET ROLE;
SELECT actor, detail->'old_payload' AS old_payload FROM dlq.events
 WHERE kind = 'edited' AND message_ids = ARRAY[:m2::bigint] ORDER BY event_id DESC LIMIT 1;
SELECT has_function_privilege('edit_reader', 'dlq_edit(bigint, jsonb, text)', 'EXECUTE') AS reader,
       has_function_privilege('edit_writer', 'dlq_edit(bigint, jsonb, text)', 'EXECUTE') AS writer,
       has_function_privilege('public', 'dlq_edit(bigint, jsonb, text)', 'EXECUTE') AS public,
       has_function_privilege('edit_op', 'dlq_edit(bigint, jsonb, text)', 'EXECUTE') AS operator;

-- ---------------------------------------------------------------------------
-- Captured rows: the edited payload is what a replay inserts into the table
-- it was captured from, so it must be a row of that table, and its editor
-- must be able to insert it there.
-- ---------------------------------------------------------------------------
CREATE TABLE edit_t (id int PRIMARY KEY, qty int NOT NULL CHECK (qty > 0),
                     total int GENERATED ALWAYS AS (qty * 10) STORED, note text);
SELECT dlq_attach('edit_t', 'edit_cap');
INSERT INTO edit_t (id, qty, note) VALUES (1, 0, 'zero'), (2, 1, 'fine');
SELECT message_id AS c1 FROM dlq.messages WHERE queue = 'edit_cap' \gset
SELECT payload, sqlstate, source_relation FROM dlq.messages WHERE message_id = :c1;

-- Not a row of edit_t: a key that is no column, a system column, a value
-- that does not convert, not an object.  22023 (or the conversion's code).
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"id": 1, "qty": 5, "is_admin": true}')$$, :c1));
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"id": 1, "qty": 5, "ctid": "(0,1)"}')$$, :c1));
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"id": 1, "qty 5); DROP TABLE edit_t; --": 1}')$$, :c1));
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"id": 1, "qty": "five"}')$$, :c1));
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"id": 1, "qty": 99999999999}')$$, :c1));
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '[1, 5]')$$, :c1));
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '5')$$, :c1));
SELECT count(*) AS edit_t_intact FROM edit_t;

-- An operator without INSERT on edit_t may not edit its rows (42501),
-- even though the replay would run with whoever replays it.
SET ROLE edit_op;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"id": 1, "qty": 5}')$$, :c1));
RESET ROLE;
-- Nor one that row-level security binds there (a replay inserts as the owner).
GRANT INSERT ON edit_t TO edit_op;
ALTER TABLE edit_t ENABLE ROW LEVEL SECURITY;
CREATE POLICY edit_small ON edit_t FOR INSERT TO edit_op WITH CHECK (qty < 3);
SET ROLE edit_op;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"id": 1, "qty": 5}')$$, :c1));
RESET ROLE;
ALTER TABLE edit_t DISABLE ROW LEVEL SECURITY;
-- With INSERT and no policy: the edit goes through.  The generated column's
-- value is ignored (recomputed by the insert), as for any captured row.
SET ROLE edit_op;
SELECT payload FROM dlq_edit(:c1, '{"id": 1, "qty": 5, "total": 999, "note": "fixed"}', 'qty was 0');
SELECT dlq_reprocess(ARRAY[:c1::bigint]) - 'request_id' AS summary;
RESET ROLE;
SELECT * FROM edit_t ORDER BY id;
SELECT status, attempts FROM dlq.messages WHERE message_id = :c1;
SELECT kind, actor, detail->'old_payload' AS old_payload FROM dlq_history(:c1) ORDER BY event_id;

-- An edited row that still violates a constraint fails its replay like any
-- other: recorded on the message, the call goes on.
INSERT INTO edit_t (id, qty) VALUES (3, -1);
SELECT message_id AS c3 FROM dlq.messages WHERE queue = 'edit_cap' AND payload->>'id' = '3' \gset
SELECT payload FROM dlq_edit(:c3, '{"id": 2, "qty": 1}', 'wrong key');
SELECT dlq_reprocess(ARRAY[:c3::bigint]) - 'request_id' - 'failures' AS summary;
SELECT status, attempts, sqlstate, error FROM dlq.messages WHERE message_id = :c3;

-- The table it came from is gone: such a message cannot be edited (42P01).
SELECT dlq_detach('edit_t');
DROP TABLE edit_t;
SELECT dlq_test.edit_try(format($$SELECT dlq_edit(%s, '{"id": 3, "qty": 1}')$$, :c3));

DELETE FROM dlq.messages WHERE queue LIKE 'edit%';
DELETE FROM dlq.events WHERE queue LIKE 'edit%';
DELETE FROM dlq.queues WHERE queue LIKE 'edit%';
DROP FUNCTION dlq_test.edit_try(text), dlq_test.edit_state();
DROP ROLE edit_op, edit_reader, edit_writer, edit_nobody;
