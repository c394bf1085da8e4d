-- etl_status: counts kept by dlq.counts, every health rule and transition,
-- stages and watermarks, metrics, privileges and bad input.
\set VERBOSITY default


-- dlq.counts matches dlq.messages for every queue and state.
CREATE VIEW st_count_mismatch AS
SELECT coalesce(m.queue, c.queue) AS queue, coalesce(m.status, c.status) AS status,
       m.n AS actual, c.n AS counted
  FROM (SELECT queue, status, count(*) AS n FROM dlq.messages GROUP BY 1, 2) m
  FULL JOIN (SELECT queue, status, sum(n) AS n FROM dlq.counts GROUP BY 1, 2 HAVING sum(n) <> 0) c
    USING (queue, status)
 WHERE m.n IS DISTINCT FROM c.n;

CREATE VIEW st AS
SELECT name, health, reason, lag, pending, replaying, review, resolved, expired,
       replay_requests_in_flight AS in_flight, paused, worker
  FROM etl_status();

------------------------------------------------------------------------------
-- Counts stay exact through inserts, dedup, updates, deletes and rollbacks.
------------------------------------------------------------------------------
SELECT count(dlq_store('st_count', jsonb_build_object('i', i), 'boom')) FROM generate_series(1, 10) i;
SELECT dlq_store('st_count', '{}', 'first', dedup_key => 'k') AS k_id \gset
SELECT dlq_store('st_count', '{}', 'second', dedup_key => 'k') = :k_id AS deduplicated;
SELECT name, pending, lag FROM st WHERE name = 'st_count';
SELECT * FROM st_count_mismatch;
-- State changes move counts between states.
UPDATE dlq.messages SET status = 'replaying' WHERE queue = 'st_count' AND payload->>'i' IN ('1', '2', '3');
UPDATE dlq.messages SET status = 'review' WHERE queue = 'st_count' AND payload->>'i' = '4';
UPDATE dlq.messages SET status = 'resolved' WHERE queue = 'st_count' AND payload->>'i' = '5';
UPDATE dlq.messages SET status = 'expired' WHERE queue = 'st_count' AND payload->>'i' = '6';
-- An update that changes no state (a claim) changes no count.
UPDATE dlq.messages SET claimed_by = 'c1' WHERE queue = 'st_count' AND status = 'replaying';
SELECT name, pending, replaying, review, resolved, expired, lag FROM st WHERE name = 'st_count';
SELECT * FROM st_count_mismatch;
-- Rolled back work leaves no trace, also in a subtransaction.
BEGIN;
SELECT count(dlq_store('st_count', '{}', 'rolled back')) FROM generate_series(1, 5);
DELETE FROM dlq.messages WHERE queue = 'st_count' AND status = 'review';
ROLLBACK;
BEGIN;
SELECT dlq_store('st_count', '{}', 'kept') > 0 AS kept;
SAVEPOINT s;
SELECT count(dlq_store('st_count', '{}', 'undone')) FROM generate_series(1, 3);
UPDATE dlq.messages SET status = 'pending' WHERE queue = 'st_count';
ROLLBACK TO s;
COMMIT;
SELECT name, pending, replaying, review, resolved, expired, lag FROM st WHERE name = 'st_count';
SELECT * FROM st_count_mismatch;
-- Nested savepoints: released ones count, rolled back ones do not.
BEGIN;
SAVEPOINT a;
SELECT count(dlq_store('st_count', '{}', 'in a')) FROM generate_series(1, 2);
SAVEPOINT b;
SELECT dlq_store('st_count', '{}', 'in b') > 0 AS stored;
RELEASE b;
SAVEPOINT c;
SELECT count(dlq_store('st_count', '{}', 'in c')) FROM generate_series(1, 5);
SAVEPOINT d;
SELECT dlq_store('st_count', '{}', 'in d') > 0 AS stored;
RELEASE d;
ROLLBACK TO c;
RELEASE a;
COMMIT;
-- An exception block is a subtransaction too.
DO $$
BEGIN
    PERFORM dlq_store('st_count', '{}', 'outside the block');
    BEGIN
        PERFORM dlq_store('st_count', '{}', 'inside the block');
        RAISE EXCEPTION 'undo the block';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
END
$$;
SELECT name, pending, lag FROM st WHERE name = 'st_count';
SELECT * FROM st_count_mismatch;
-- Deletes, and a statement touching several queues.
SELECT dlq_store('st_count2', '{}', 'other queue') > 0 AS stored;
DELETE FROM dlq.messages WHERE queue IN ('st_count', 'st_count2') AND status IN ('resolved', 'expired', 'pending')
   AND (queue = 'st_count2' OR payload->>'i' IN ('5', '6', '7'));
SELECT name, pending, replaying, review, resolved, expired, lag FROM st WHERE name LIKE 'st_count%' ORDER BY name;
SELECT * FROM st_count_mismatch;
-- The last failure follows new failures, dedup updates included.
SELECT last_failure_at = (SELECT max(last_failed_at) FROM dlq.messages WHERE queue = 'st_count') AS last_failure_ok
  FROM etl_status('st_count');
SELECT pg_sleep(0.01);
SELECT dlq_store('st_count', '{}', 'third', dedup_key => 'k') = :k_id AS deduplicated;
SELECT last_failure_at = (SELECT last_failed_at FROM dlq.messages WHERE message_id = :k_id) AS follows_dedup
  FROM etl_status('st_count');
-- dlq.recount() rebuilds the counts from scratch.
UPDATE dlq.counts SET n = n + 1000 WHERE queue = 'st_count' AND status = 'pending';
SELECT count(*) > 0 AS broken FROM st_count_mismatch;
SELECT dlq.recount() = (SELECT count(*) FROM dlq.messages) AS recounted;
SELECT * FROM st_count_mismatch;
SELECT name, pending, replaying, review, lag FROM st WHERE name = 'st_count';

------------------------------------------------------------------------------
-- Health rules: walk live -> syncing -> stale -> error and back.
-- "now" and the worker state are set by the test-only GUCs.
------------------------------------------------------------------------------
SET dlq.status_worker = 'running';
SET dlq.status_threshold = 3;
SET dlq.stale_after = '1h';
SET dlq.syncing_window = '10s';
SELECT dlq_store('st_walk', '{"n": 1}', 'boom') > 0 AS stored;
SELECT set_config('dlq.status_now', (stored_at + interval '1 min')::text, false) IS NOT NULL AS now_set
  FROM dlq.messages WHERE queue = 'st_walk';
SELECT oldest_pending_age, last_replay_at FROM etl_status('st_walk');
-- lag 1 <= threshold, young, no activity: live
SELECT * FROM st WHERE name = 'st_walk';
-- lag exactly at the threshold is not over it
SELECT count(dlq_store('st_walk', '{}', 'boom')) FROM generate_series(1, 2);
SELECT name, health, reason FROM st WHERE name = 'st_walk';
-- lag 4 > 3, worker running, no replay activity: stale
SELECT dlq_store('st_walk', '{}', 'boom') > 0 AS stored;
SELECT name, health, reason FROM st WHERE name = 'st_walk';
-- replay activity 5 s ago (dlq.queues.last_replay_at): syncing
UPDATE dlq.queues SET last_replay_at = current_setting('dlq.status_now')::timestamptz - interval '5 s'
 WHERE queue = 'st_walk';
SELECT name, health, reason FROM st WHERE name = 'st_walk';
SELECT last_replay_at = current_setting('dlq.status_now')::timestamptz - interval '5 s' AS activity_shown
  FROM etl_status('st_walk');
-- activity exactly dlq.syncing_window ago still counts
UPDATE dlq.queues SET last_replay_at = current_setting('dlq.status_now')::timestamptz - interval '10 s'
 WHERE queue = 'st_walk';
SELECT name, health FROM st WHERE name = 'st_walk';
-- the worker stops: error, whatever the activity
SET dlq.status_worker = 'stopped';
SELECT name, health, reason, worker FROM st WHERE name = 'st_walk';
SET dlq.status_worker = 'not_preloaded';
SELECT name, health, reason, worker FROM st WHERE name = 'st_walk';
-- on a standby the primary's worker is out of sight: not counted as down
SET dlq.status_worker = 'standby';
SELECT name, health, reason, worker FROM st WHERE name = 'st_walk';
-- back to running, activity 11 s ago: stale again
SET dlq.status_worker = 'running';
UPDATE dlq.queues SET last_replay_at = current_setting('dlq.status_now')::timestamptz - interval '11 s'
 WHERE queue = 'st_walk';
SELECT name, health, reason FROM st WHERE name = 'st_walk';
-- replay activity from the audit trail counts too: syncing
INSERT INTO dlq.events (at, actor, kind, queue, message_count)
VALUES (current_setting('dlq.status_now')::timestamptz - interval '2 s', 'test', 'acked', 'st_walk', 1);
SELECT name, health FROM st WHERE name = 'st_walk';
SELECT last_replay_at = current_setting('dlq.status_now')::timestamptz - interval '2 s' AS newest_activity_shown
  FROM etl_status('st_walk');
-- other events are no replay activity
INSERT INTO dlq.events (at, actor, kind, queue, message_count)
VALUES (current_setting('dlq.status_now')::timestamptz - interval '1 s', 'test', 'configured', 'st_walk', 0);
SELECT last_replay_at = current_setting('dlq.status_now')::timestamptz - interval '2 s' AS unchanged
  FROM etl_status('st_walk');
-- an hour later the activity is old and so is the oldest message: stale
SELECT set_config('dlq.status_now', (min(stored_at) + interval '1 hour 1 min')::text, false) IS NOT NULL AS now_set
  FROM dlq.messages WHERE queue = 'st_walk';
SELECT name, health, reason FROM st WHERE name = 'st_walk';
-- replaying messages count as lag; in-flight requests are distinct request ids
UPDATE dlq.messages SET status = 'replaying', replay_request_id = ('00000000-0000-0000-0000-00000000000' || (message_id % 2))::uuid
 WHERE queue = 'st_walk' AND message_id IN (SELECT message_id FROM dlq.messages WHERE queue = 'st_walk' ORDER BY 1 LIMIT 3);
SELECT name, health, lag, pending, replaying, in_flight FROM st WHERE name = 'st_walk';
-- most resolved, lag 1, but the oldest pending is over dlq.stale_after: still stale
UPDATE dlq.messages SET status = 'resolved', replay_request_id = NULL WHERE queue = 'st_walk' AND status = 'replaying';
SELECT set_config('dlq.status_now', (stored_at + interval '1 hour 1 min')::text, false) IS NOT NULL AS now_set
  FROM dlq.messages WHERE queue = 'st_walk' AND status = 'pending';
SELECT name, health, reason, lag, in_flight FROM st WHERE name = 'st_walk';
-- exactly dlq.stale_after old is not older than it: live
SELECT set_config('dlq.status_now', (stored_at + interval '1 hour')::text, false) IS NOT NULL AS now_set
  FROM dlq.messages WHERE queue = 'st_walk' AND status = 'pending';
SELECT name, health, reason FROM st WHERE name = 'st_walk';
-- with fresh replay activity the old message is being worked on: syncing
SELECT set_config('dlq.status_now', (stored_at + interval '2 hours')::text, false) IS NOT NULL AS now_set
  FROM dlq.messages WHERE queue = 'st_walk' AND status = 'pending';
SELECT name, health FROM st WHERE name = 'st_walk';
UPDATE dlq.queues SET last_replay_at = current_setting('dlq.status_now')::timestamptz WHERE queue = 'st_walk';
SELECT name, health, reason FROM st WHERE name = 'st_walk';
-- a stale old message with the worker stopped is stale, not error (lag 1 is under the threshold)
SET dlq.status_worker = 'stopped';
UPDATE dlq.queues SET last_replay_at = NULL WHERE queue = 'st_walk';
DELETE FROM dlq.events WHERE queue = 'st_walk';
SELECT name, health, reason FROM st WHERE name = 'st_walk';
-- all resolved: live, even with the worker stopped
UPDATE dlq.messages SET status = 'resolved' WHERE queue = 'st_walk';
SELECT name, health, reason, lag FROM st WHERE name = 'st_walk';
SELECT oldest_pending_at, oldest_pending_age FROM etl_status('st_walk');
-- a paused queue is shown as paused
UPDATE dlq.queues SET paused = true WHERE queue = 'st_walk';
SELECT name, paused FROM st WHERE name = 'st_walk';
-- threshold 0: any lag is over it
SET dlq.status_worker = 'running';
SET dlq.status_threshold = 0;
SELECT dlq_store('st_walk', '{}', 'boom') > 0 AS stored;
SELECT name, health, reason FROM st WHERE name = 'st_walk';
RESET dlq.status_threshold;
SELECT set_config('dlq.status_now', (max(stored_at) + interval '1 min')::text, false) IS NOT NULL AS now_set
  FROM dlq.messages WHERE queue = 'st_walk' AND status = 'pending';
SELECT name, health, reason FROM st WHERE name = 'st_walk';

------------------------------------------------------------------------------
-- Stages
------------------------------------------------------------------------------
CREATE TABLE st_src (id bigint PRIMARY KEY, v text);
INSERT INTO st_src SELECT i, 'v' || i FROM generate_series(101, 600) i;
SELECT etl_register_stage('st_mart', 'st_src', 'id');
SELECT stage, source, key_column, watermark, watermark_at FROM dlq.stages WHERE stage = 'st_mart';
SELECT kind, name, health, reason, lag, watermark, source_max, pending, paused
  FROM etl_status('st_mart');
-- the watermark advances; lag = source max - watermark
SELECT etl_watermark('st_mart', 550);
SELECT set_config('dlq.status_now', (watermark_at + interval '1 s')::text, false) IS NOT NULL AS now_set
  FROM dlq.stages WHERE stage = 'st_mart';
SELECT name, health, reason, lag, watermark, source_max FROM etl_status('st_mart');
-- never backwards: a lower position keeps the watermark and its time
SELECT watermark_at AS before_at FROM dlq.stages WHERE stage = 'st_mart' \gset
SELECT etl_watermark('st_mart', 500);
SELECT etl_watermark('st_mart', 550);
SELECT watermark, watermark_at = :'before_at' AS time_kept FROM dlq.stages WHERE stage = 'st_mart';
-- no advance for longer than the window: lag 50 <= 100: live
SELECT set_config('dlq.status_now', (watermark_at + interval '1 min')::text, false) IS NOT NULL AS now_set
  FROM dlq.stages WHERE stage = 'st_mart';
SELECT name, health, reason FROM etl_status('st_mart');
-- the source grows past the threshold: stale, then error when the worker stops
INSERT INTO st_src SELECT i, 'v' || i FROM generate_series(601, 700) i;
SELECT name, health, reason, lag FROM etl_status('st_mart');
SET dlq.status_worker = 'stopped';
SELECT name, health, reason FROM etl_status('st_mart');
SET dlq.status_worker = 'running';
-- caught up: live
SELECT etl_watermark('st_mart', 700);
SELECT name, health, reason, lag FROM etl_status('st_mart');
-- a watermark past the source max is no negative lag
SELECT etl_watermark('st_mart', 900);
SELECT name, health, lag FROM etl_status('st_mart');
-- re-registering resets the watermark
SELECT etl_register_stage('st_mart', 'st_src', 'id');
SELECT name, health, lag, watermark FROM etl_status('st_mart');
-- an empty source: no lag
CREATE TABLE st_empty (k integer);
CREATE INDEX ON st_empty (k);
SELECT etl_register_stage('st_empty_stage', 'st_empty', 'k');
SELECT name, health, reason, lag, source_max FROM etl_status('st_empty_stage');
-- the max is read from the index
EXPLAIN (COSTS OFF) SELECT pg_catalog.max(id)::pg_catalog.int8 FROM public.st_src;
-- a dropped or renamed key column makes the stage an error, not etl_status
ALTER TABLE st_empty RENAME COLUMN k TO k2;
SELECT name, health, reason, lag FROM etl_status('st_empty_stage');
DROP TABLE st_empty;
SELECT name, health, reason LIKE 'source relation % no longer exists' AS gone FROM etl_status('st_empty_stage');
DELETE FROM dlq.stages WHERE stage = 'st_empty_stage';
-- the registration is audited
SELECT kind, detail FROM dlq.events WHERE kind = 'configured' AND detail->>'stage' = 'st_mart' ORDER BY event_id;

-- Bad registrations: a clear error and nothing registered.
CREATE TABLE st_noidx (id bigint, t text, n numeric);
CREATE INDEX ON st_noidx (t);
CREATE INDEX ON st_noidx (id) WHERE id > 0;
CREATE INDEX ON st_noidx ((id + 1));
CREATE INDEX ON st_noidx USING hash (id);
CREATE INDEX ON st_noidx (t, id);
CREATE VIEW st_view AS SELECT * FROM st_src;
SELECT count(*) AS stages_before FROM dlq.stages \gset
SELECT dlq_test.try($$SELECT etl_register_stage('st_bad', 'st_noidx', 'id')$$);
SELECT dlq_test.try($$SELECT etl_register_stage('st_bad', 'st_noidx', 't')$$);
SELECT dlq_test.try($$SELECT etl_register_stage('st_bad', 'st_noidx', 'n')$$);
SELECT dlq_test.try($$SELECT etl_register_stage('st_bad', 'st_noidx', 'nope')$$);
SELECT dlq_test.try($$SELECT etl_register_stage('st_bad', 'st_view', 'id')$$);
SELECT dlq_test.try($$SELECT etl_register_stage('st_bad', 12345678, 'id')$$);
SELECT dlq_test.try($$SELECT etl_register_stage(NULL, 'st_src', 'id')$$);
SELECT dlq_test.try($$SELECT etl_register_stage('', 'st_src', 'id')$$);
SELECT dlq_test.try($$SELECT etl_register_stage(repeat('s', 64), 'st_src', 'id')$$);
SELECT dlq_test.try($$SELECT etl_register_stage('st_bad', NULL, 'id')$$);
SELECT dlq_test.try($$SELECT etl_register_stage('st_bad', 'st_src', NULL)$$);
SELECT count(*) = :stages_before AS nothing_registered FROM dlq.stages;
-- Bad watermarks and names.
SELECT etl_watermark('st_mart', 650) AS wm_before \gset
SELECT dlq_test.try($$SELECT etl_watermark('st_nope', 1)$$);
SELECT dlq_test.try($$SELECT etl_watermark(NULL, 1)$$);
SELECT dlq_test.try($$SELECT etl_watermark('st_mart', NULL)$$);
SELECT watermark = :wm_before AS unchanged FROM dlq.stages WHERE stage = 'st_mart';
SELECT dlq_test.try($$SELECT * FROM etl_status('st_nope')$$);
SELECT dlq_test.try($$SELECT * FROM etl_status('')$$);
SELECT dlq_test.try($$SELECT * FROM etl_status(E'a\nb')$$);
SET dlq.status_now = 'not a time';
SELECT dlq_test.try($$SELECT * FROM etl_status('st_walk')$$);
RESET dlq.status_now;
SELECT dlq_test.try($$SET dlq.status_worker = 'dead'$$);

------------------------------------------------------------------------------
-- etl_status_json, dlq.metrics, dlq.etl_worker_state
------------------------------------------------------------------------------
SET dlq.status_worker = 'running';
SELECT set_config('dlq.status_now', (max(stored_at) + interval '1 min')::text, false) IS NOT NULL AS now_set
  FROM dlq.messages WHERE queue = 'st_walk';
SELECT jsonb_pretty(q - 'last_failure_at' - 'oldest_pending_at' - 'last_replay_at')
  FROM jsonb_array_elements(etl_status_json()->'queues') q WHERE q->>'name' = 'st_walk';
SELECT jsonb_pretty(s - 'watermark_at') FROM jsonb_array_elements(etl_status_json()->'stages') s WHERE s->>'name' = 'st_mart';
SELECT etl_status_json()->'worker'->>'state' AS worker,
       (etl_status_json()->>'now')::timestamptz = current_setting('dlq.status_now')::timestamptz AS now_shown;
-- overall health is the worst of all rows
SELECT etl_status_json()->>'health' = (SELECT health FROM etl_status()
        ORDER BY array_position(ARRAY['live', 'syncing', 'stale', 'error'], health) DESC LIMIT 1) AS worst;
SET dlq.status_worker = 'stopped';
SET dlq.status_threshold = 0;
SELECT etl_status_json()->>'health' AS overall;
SET dlq.status_worker = 'running';
RESET dlq.status_threshold;
-- every row of etl_status appears in the JSON with the same health
SELECT count(*) AS disagreements FROM etl_status() s
 WHERE s.health IS DISTINCT FROM (SELECT e->>'health' FROM jsonb_array_elements(
        etl_status_json()->(CASE s.kind WHEN 'queue' THEN 'queues' ELSE 'stages' END)) e
        WHERE e->>'name' = s.name);
SELECT metric, queue, stage, status, value FROM dlq.metrics
 WHERE queue = 'st_walk' OR stage = 'st_mart' OR metric = 'dlq_worker_up' ORDER BY 1, 2, 3, 4;
-- etl_worker_state: without the test override, read from shared memory
RESET dlq.status_worker;
SELECT state IN ('running', 'stopped') AS state_known FROM dlq.etl_worker_state();

------------------------------------------------------------------------------
-- Privileges: readers see status, writers advance watermarks, operators register.
------------------------------------------------------------------------------
CREATE ROLE st_reader IN ROLE dlq_reader;
CREATE ROLE st_writer IN ROLE dlq_writer;
CREATE ROLE st_operator IN ROLE dlq_operator;
GRANT SELECT ON st_src TO st_reader, st_operator;
SET ROLE st_reader;
SELECT name, health FROM etl_status('st_walk');
SELECT count(*) > 0 AS metrics_visible FROM dlq.metrics;
SELECT dlq_test.try($$SELECT etl_watermark('st_mart', 1000)$$);
SELECT dlq_test.try($$SELECT etl_register_stage('st_r', 'st_src', 'id')$$);
SELECT dlq_test.try($$SELECT dlq.recount()$$);
RESET ROLE;
SET ROLE st_writer;
SELECT etl_watermark('st_mart', 1000);
SELECT dlq_test.try($$SELECT * FROM etl_status()$$);
RESET ROLE;
SET ROLE st_operator;
SELECT dlq_test.try($$SELECT etl_register_stage('st_op', 'st_noidx', 'id')$$);
SELECT etl_register_stage('st_op', 'st_src', 'id');
RESET ROLE;
-- the source max is read with the caller's privileges
REVOKE SELECT ON st_src FROM st_reader;
SET ROLE st_reader;
SELECT dlq_test.try($$SELECT * FROM etl_status('st_mart')$$);
RESET ROLE;
SET ROLE st_writer;
SELECT dlq_test.try($$SELECT etl_register_stage('st_w', 'st_src', 'id')$$);
RESET ROLE;
DELETE FROM dlq.stages WHERE stage IN ('st_mart', 'st_op');
DROP OWNED BY st_reader, st_writer, st_operator;
DROP ROLE st_reader, st_writer, st_operator;
RESET dlq.status_now;
RESET dlq.status_worker;
