-- Redrive tasks (issue 14): dlq_redrive_start, dlq_redrive_status,
-- dlq_redrive_cancel and dlq.redrive_tasks; every bad argument with its
-- SQLSTATE; privileges with hostile roles.  The worker runs tasks (TAP test
-- tests/t/076_redrive.pl); here every task is started inside a transaction
-- that is rolled back, so that the worker never sees one and the output
-- does not depend on its timing.
\set VERBOSITY default
SET client_min_messages = warning;
SET TIME ZONE 'UTC';

CREATE ROLE redrive_op IN ROLE dlq_operator;
CREATE ROLE redrive_op2 IN ROLE dlq_operator;
CREATE ROLE redrive_reader IN ROLE dlq_reader;
CREATE ROLE redrive_writer IN ROLE dlq_writer;
CREATE ROLE redrive_nobody;

SELECT queue FROM dlq_configure('redrive_a', require_listener => false);
SELECT count(*) FROM (SELECT dlq_store('redrive_a', jsonb_build_object('n', n), 'failed',
                                       CASE WHEN n % 2 = 0 THEN 'api' END, '40001')
                        FROM generate_series(1, 5) n) s;

-- ---------------------------------------------------------------------------
-- Every bad argument (nothing is created).
-- ---------------------------------------------------------------------------
SELECT dlq_test.err($$SELECT dlq_redrive_start(NULL, 10)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('', 10)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start(repeat('q', 64), 10)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', NULL)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 0)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', -5)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 100001)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10, sqlstate => '4000')$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10, error_class => 'fatal')$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10, component => E'a\tb')$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10, since => '2026-01-02', until => '2026-01-01')$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10, force => NULL)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10, max_messages => 0)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10, reason => repeat('r', 54001))$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10, ticket => repeat('t', 201))$$);
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_nosuch', 10)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_status(NULL)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_status(-1)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_cancel(NULL)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_cancel(-1)$$);
SELECT count(*) AS tasks FROM dlq.redrive_tasks;

-- ---------------------------------------------------------------------------
-- A task: its row, its status, its event, one active task per queue,
-- cancel twice.
-- ---------------------------------------------------------------------------
BEGIN;
SET LOCAL ROLE redrive_op;
SELECT dlq_redrive_start('redrive_a', 50, component => 'api', reason => 'fixed the API',
                         ticket => 'INC-7') AS task \gset
SELECT queue, state, rate_per_second, component, force, max_messages, reason, ticket,
       created_by, total, cursor, taken, moved, failed,
       last_id = (SELECT max(message_id) FROM dlq.messages WHERE queue = 'redrive_a') AS last_id_ok
  FROM dlq.redrive_tasks WHERE task_id = :task;
SELECT jsonb_pretty(dlq_redrive_status(:task) - 'task_id' - 'started_at' - 'eta') AS status;
SELECT (dlq_redrive_status(:task)->>'eta')::timestamptz - now() AS eta_from_now;
SELECT actor, kind, queue, detail - 'task_id' AS detail FROM dlq.events
 WHERE queue = 'redrive_a' AND kind::text LIKE 'redrive\_%' ORDER BY event_id;
-- a second task on the same queue, by anyone, waits for this one to end
SELECT regexp_replace(dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10)$$),
                      :'task', 'T', 'g') AS err;
SELECT dlq_redrive_cancel(:task) AS cancelled;
SELECT dlq_redrive_cancel(:task) AS cancelled_again;
SELECT state, end_reason, finished_at IS NOT NULL AS finished FROM dlq.redrive_tasks WHERE task_id = :task;
SELECT dlq_redrive_status(:task)->>'state' AS state, dlq_redrive_status(:task)->'eta' AS eta;
SELECT actor, kind, detail - 'task_id' AS detail FROM dlq.events
 WHERE queue = 'redrive_a' AND kind::text LIKE 'redrive\_%' ORDER BY event_id;
-- once it ended, a new task may start: with force and max_messages, total is capped
SELECT dlq_redrive_start('redrive_a', 1, force => true, max_messages => 2) AS task2 \gset
SELECT state, total, max_messages, force FROM dlq.redrive_tasks WHERE task_id = :task2;
ROLLBACK;

-- ---------------------------------------------------------------------------
-- Privileges: a writer, a reader and a role without dlq roles cannot start
-- or cancel; a reader sees status and the table; an operator cancels
-- another operator's task; a queue bound to a table needs INSERT on it.
-- ---------------------------------------------------------------------------
SET ROLE redrive_writer;
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_status(1)$$);
SELECT dlq_test.err($$SELECT count(*) FROM dlq.redrive_tasks$$);
SET ROLE redrive_nobody;
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10)$$);
SELECT dlq_test.err($$SELECT dlq_redrive_cancel(1)$$);
RESET ROLE;

BEGIN;
SET LOCAL ROLE redrive_op;
SELECT dlq_redrive_start('redrive_a', 10, reason => 'visible to readers') AS task \gset
SET LOCAL ROLE redrive_reader;
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_a', 10)$$);
SELECT dlq_test.err(format('SELECT dlq_redrive_cancel(%s)', :task));
SELECT dlq_redrive_status(:task)->>'state' AS state, dlq_redrive_status(:task)->>'reason' AS reason,
       dlq_redrive_status(:task)->>'created_by' AS created_by;
SELECT state, reason FROM dlq.redrive_tasks WHERE task_id = :task;
SET LOCAL ROLE redrive_op2;
SELECT dlq_redrive_cancel(:task) AS cancelled_by_another_operator;
SELECT actor, kind FROM dlq.events WHERE queue = 'redrive_a' AND kind::text LIKE 'redrive\_%' ORDER BY event_id;
ROLLBACK;

-- a queue bound to a table: the task replays as its creator, who needs INSERT
CREATE TABLE redrive_t (id int PRIMARY KEY);
SELECT dlq_attach('redrive_t', 'redrive_tq');
GRANT SELECT ON redrive_t TO redrive_op;
SET ROLE redrive_op;
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_tq', 10)$$);
RESET ROLE;
GRANT INSERT ON redrive_t TO redrive_op;
BEGIN;
SET LOCAL ROLE redrive_op;
SELECT dlq_test.try($$SELECT dlq_redrive_start('redrive_tq', 10)$$);
ROLLBACK;

-- a queue with a replay handler: the task calls it as its creator, who needs EXECUTE
CREATE FUNCTION redrive_handle(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
REVOKE EXECUTE ON FUNCTION redrive_handle(jsonb) FROM PUBLIC;
SELECT replay_handler FROM dlq_configure('redrive_hq', replay_handler => 'redrive_handle(jsonb)');
SET ROLE redrive_op;
SELECT dlq_test.err($$SELECT dlq_redrive_start('redrive_hq', 10)$$);
RESET ROLE;
GRANT EXECUTE ON FUNCTION redrive_handle(jsonb) TO redrive_op;
BEGIN;
SET LOCAL ROLE redrive_op;
SELECT dlq_test.try($$SELECT dlq_redrive_start('redrive_hq', 10)$$);
ROLLBACK;

-- nothing of the above is left
SELECT count(*) AS tasks FROM dlq.redrive_tasks;
SELECT count(*) AS redrive_events FROM dlq.events WHERE kind::text LIKE 'redrive\_%';

-- etl_status_json shows running and paused tasks
BEGIN;
SELECT dlq_redrive_start('redrive_a', 5) AS task \gset
SELECT jsonb_array_length(etl_status_json()->'redrive_tasks') AS running_tasks,
       etl_status_json()->'redrive_tasks'->0->>'queue' AS queue,
       etl_status_json()->'retries_stopped' AS retries_stopped;
SELECT dlq_redrive_cancel(:task);
SELECT jsonb_array_length(etl_status_json()->'redrive_tasks') AS running_tasks;
ROLLBACK;

DROP TABLE redrive_t;
SELECT replay_handler FROM dlq_configure('redrive_hq', replay_handler => 0);
DROP FUNCTION redrive_handle(jsonb);
SELECT dlq_discard_all('redrive_a')->>'discarded' AS discarded;
DROP ROLE redrive_op, redrive_op2, redrive_reader, redrive_writer, redrive_nobody;
