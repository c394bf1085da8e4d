# Redrive tasks run by the worker (issue 14, DESIGN 7.3): the rate holds
# within 20% over more than 10 s with the default naptime of 1 s; cancel
# stops a task; a crash and restart in the middle of a task neither skips
# nor repeats a message (half of them fail again and go back to pending,
# where a task that lost its cursor would find them); a task whose creator loses dlq_operator fails; a
# task whose replays fail too often pauses, resumes by itself and finishes;
# a queue's automatic retries stop early the same way and resume.  Every
# wait polls; nothing sleeps a fixed time.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('redrive');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
dlq.naptime = 1s
dlq.replay_timeout = 3600
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION dlq;
    CREATE ROLE rd_op LOGIN IN ROLE dlq_operator;
    CREATE ROLE rd_op2 LOGIN IN ROLE dlq_operator;
    CREATE SCHEMA rd AUTHORIZATION rd_op;
});
ok($node->poll_query_until('postgres', 'SELECT running FROM dlq.worker_status()'),
	'the worker runs');

sub as_role
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

sub q1
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# n messages in a queue that hands its messages to consumers (none needed).
sub fill
{
	my ($queue, $n) = @_;
	q1(qq{
        SELECT dlq_configure('$queue', require_listener => false);
        SELECT count(dlq_store('$queue', jsonb_build_object('n', g), 'failed', sqlstate => '40001'))
          FROM generate_series(1, $n) g;
    });
}

# --- rate: 25 messages a second, measured over the whole task (> 10 s) --------
fill('rd_rate', 300);
my $task = as_role('rd_op', q{SELECT dlq_redrive_start('rd_rate', 25, reason => 'rate test')});
ok($node->poll_query_until('postgres',
		"SELECT state = 'finished' FROM dlq.redrive_tasks WHERE task_id = $task", 't'),
	'the rate task finishes');
# Each tick is one dlq_reprocess, one replay_requested event: the rate is the
# messages after the first tick over the time from the first tick to the last.
my ($moved, $secs, $rate) = map { $_ eq '' ? -1 : $_ } split(/\|/, q1(qq{
    SELECT sum(message_count), extract(epoch FROM max(at) - min(at))::numeric(10,2),
           ((sum(message_count) - (array_agg(message_count ORDER BY at))[1])
            / nullif(extract(epoch FROM max(at) - min(at)), 0))::numeric(10,2)
      FROM dlq.events WHERE queue = 'rd_rate' AND kind = 'replay_requested'}), -1);
is($moved, 300, 'every message of the rate task was replayed');
cmp_ok($secs, '>=', 10, "the rate was measured over at least 10 s ($secs s)");
cmp_ok($rate, '>=', 20, "rate $rate/s is at least 80% of 25/s");
cmp_ok($rate, '<=', 30, "rate $rate/s is at most 120% of 25/s");
is(q1(q{SELECT count(*) FILTER (WHERE status = 'replaying' AND attempts = 1) || '/' || count(*)
          FROM dlq.messages WHERE queue = 'rd_rate'}),
	'300/300', 'each message replayed once');
is(q1(qq{SELECT moved || ' ' || failed || ' ' || taken || ' ' || total || ' ' || (finished_at IS NOT NULL)
           FROM dlq.redrive_tasks WHERE task_id = $task}),
	'300 0 300 300 true', 'the task counted 300 moved of 300');
is(q1(qq{SELECT string_agg(kind::text, ',' ORDER BY event_id) FROM dlq.events
          WHERE queue = 'rd_rate' AND kind::text LIKE 'redrive\_%'}),
	'redrive_started,redrive_finished', 'started and finished are audited');
is(q1(qq{SELECT count(*) FROM dlq.events WHERE queue = 'rd_rate' AND kind = 'replay_requested'
            AND (actor <> 'rd_op' OR detail->>'reason' <> 'rate test')}),
	'0', 'the replays ran as the task\'s creator, with its reason');

# --- cancel stops a task --------------------------------------------------------
fill('rd_cancel', 200);
$task = as_role('rd_op', q{SELECT dlq_redrive_start('rd_cancel', 5)});
ok($node->poll_query_until('postgres',
		"SELECT moved >= 3 FROM dlq.redrive_tasks WHERE task_id = $task", 't'),
	'the task to cancel moves messages');
is(as_role('rd_op2', "SELECT dlq_redrive_cancel($task)"), 't', 'another operator cancels it');
my $at_cancel = q1(q{SELECT count(*) FROM dlq.messages WHERE queue = 'rd_cancel' AND status = 'replaying'});
my $rounds = q1('SELECT rounds FROM dlq.worker_status()');
ok($node->poll_query_until('postgres', "SELECT rounds >= $rounds + 3 FROM dlq.worker_status()", 't'),
	'three more worker rounds');
is(q1(q{SELECT count(*) FROM dlq.messages WHERE queue = 'rd_cancel' AND status = 'replaying'}),
	$at_cancel, 'nothing was replayed after the cancel');
is(q1(qq{SELECT state || ' ' || moved FROM dlq.redrive_tasks WHERE task_id = $task}),
	"cancelled $at_cancel", 'the task is cancelled and its count matches the messages');
is(as_role('rd_op', "SELECT dlq_redrive_cancel($task)"), 'f', 'a second cancel changes nothing');

# --- a crash in the middle of a task: each message offered exactly once ---------
# 200 captured rows; on replay the odd ones fail again and go back to pending,
# where a task that lost its cursor would take them a second time.
as_role('rd_op', q{
    CREATE TABLE rd.c (id int PRIMARY KEY, v int CHECK (v > 0));
    SELECT dlq_attach('rd.c', 'rd_crash');
    SELECT dlq_configure('rd_crash', max_attempts => 10);
    INSERT INTO rd.c SELECT g, -g FROM generate_series(1, 200) g;
    ALTER TABLE rd.c DROP CONSTRAINT c_v_check, ADD CONSTRAINT c_v_check CHECK (v % 2 = 0);
});
$task = as_role('rd_op', q{SELECT dlq_redrive_start('rd_crash', 20)});
ok($node->poll_query_until('postgres',
		"SELECT taken >= 40 FROM dlq.redrive_tasks WHERE task_id = $task", 't'),
	'the task is under way');
$node->stop('immediate');
$node->start;
my $after = q1(qq{SELECT state || ' ' || (taken < 200) FROM dlq.redrive_tasks WHERE task_id = $task});
is($after, 'running true', 'after the crash the task is still running, not done');
ok($node->poll_query_until('postgres',
		"SELECT state = 'finished' FROM dlq.redrive_tasks WHERE task_id = $task", 't'),
	'the task resumes and finishes after the restart');
is(q1(q{SELECT string_agg(status || ':' || attempts || ':' || n, ' ' ORDER BY status)
          FROM (SELECT status, attempts, count(*) AS n FROM dlq.messages WHERE queue = 'rd_crash'
                 GROUP BY 1, 2) s}),
	'pending:1:100 resolved:1:100', 'no message skipped, none replayed twice');
is(q1(q{SELECT count(*) FROM rd.c}), '100', 'the 100 even rows are in the table');
is(q1(qq{SELECT moved || ' ' || failed || ' ' || taken || ' ' || skipped
           FROM dlq.redrive_tasks WHERE task_id = $task}),
	'100 100 200 0', 'the task counted each message once');

# --- the creator loses dlq_operator: the task fails at its next tick ---------------
fill('rd_role', 100);
$task = as_role('rd_op2', q{SELECT dlq_redrive_start('rd_role', 2)});
ok($node->poll_query_until('postgres',
		"SELECT moved >= 1 FROM dlq.redrive_tasks WHERE task_id = $task", 't'),
	'the task of rd_op2 runs');
q1('REVOKE dlq_operator FROM rd_op2');
ok($node->poll_query_until('postgres',
		"SELECT state = 'failed' FROM dlq.redrive_tasks WHERE task_id = $task", 't'),
	'the task fails once its creator is no longer an operator');
like(q1(qq{SELECT end_reason FROM dlq.redrive_tasks WHERE task_id = $task}),
	qr/no longer a member of dlq_operator/, 'its end_reason says why');
is(q1(qq{SELECT count(*) FROM dlq.events WHERE queue = 'rd_role' AND kind = 'redrive_failed'}),
	'1', 'the failure is audited');
q1('GRANT dlq_operator TO rd_op2');

# --- early stop of a task: pauses, resumes by itself, finishes ---------------------
# 40 captured rows; on replay the first 15 still fail a CHECK, the rest
# succeed: whatever the size of the first ticks (up to a second's worth, 20),
# more than half of the first 10 or more replays fail, and after the pause
# at most 5 of the next ones.
# A trigger of the table records who runs it and whether it may leave the
# security-restricted operation (the worker connects as a superuser).
as_role('rd_op', q{
    CREATE TABLE rd.t (id int PRIMARY KEY, v int CHECK (v > 0));
    CREATE TABLE rd.seen (who name, role_refused boolean);
    CREATE FUNCTION rd.spy() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        refused boolean := false;
    BEGIN
        BEGIN
            PERFORM pg_catalog.set_config('role', 'none', false);
        EXCEPTION WHEN insufficient_privilege THEN
            refused := SQLERRM LIKE 'cannot set parameter "role" within security-%';
        END;
        INSERT INTO rd.seen VALUES (current_user, refused);
        RETURN NEW;
    END $$;
    SELECT dlq_attach('rd.t', 'rd_t');
    CREATE TRIGGER zz_spy BEFORE INSERT ON rd.t FOR EACH ROW EXECUTE FUNCTION rd.spy();
    INSERT INTO rd.t SELECT g, -g FROM generate_series(1, 40) g;
    ALTER TABLE rd.t DROP CONSTRAINT t_v_check, ADD CONSTRAINT t_v_check CHECK (v < -15);
    TRUNCATE rd.seen;  -- what the spy saw of the load itself
    SELECT dlq_configure('rd_t', retry_stop_ratio => 0.5, retry_base => '2 s', retry_max => '1 min');
});
is(q1(q{SELECT count(*) FROM dlq.messages WHERE queue = 'rd_t' AND status = 'pending'}), '40',
	'40 rows captured');
$task = as_role('rd_op', q{SELECT dlq_redrive_start('rd_t', 20)});
ok($node->poll_query_until('postgres',
		"SELECT state = 'paused' FROM dlq.redrive_tasks WHERE task_id = $task", 't'),
	'the task pauses when its first replays fail');
my ($reason, $wait, $status) = split /\|/, q1(qq{
    SELECT paused_reason, extract(epoch FROM resume_at - paused_at)::numeric(10,1),
           dlq_redrive_status($task)->>'state'
      FROM dlq.redrive_tasks WHERE task_id = $task});
like($reason, qr/^\d+ of the last \d+ replays failed, above the queue's retry_stop_ratio 0.5$/,
	'paused_reason says why');
is($wait, '2.0', 'it resumes after the queue\'s retry_base');
is($status, 'paused', 'dlq_redrive_status shows it paused');
is(q1(qq{SELECT etl_status_json()->'redrive_tasks'->0->>'state'}), 'paused',
	'etl_status_json shows the paused task');
ok($node->poll_query_until('postgres',
		"SELECT state = 'finished' FROM dlq.redrive_tasks WHERE task_id = $task", 't'),
	'the task resumes by itself and finishes');
is(q1(qq{SELECT moved || ' ' || failed || ' ' || pauses FROM dlq.redrive_tasks WHERE task_id = $task}),
	'25 15 0', '25 moved, 15 failed');
is(q1(q{SELECT string_agg(kind::text, ',' ORDER BY event_id) FROM dlq.events
          WHERE queue = 'rd_t' AND kind::text LIKE 'redrive\_%'}),
	'redrive_started,redrive_paused,redrive_resumed,redrive_finished',
	'pause and resume are audited');
is(q1(q{SELECT count(*) FROM rd.t}), '25', 'the 25 rows are in the table');
is(q1(q{SELECT string_agg(DISTINCT who || ' ' || role_refused, ',') || ' ' || count(*) FROM rd.seen}), 'rd_op true 25',
	'the replays ran as the task\'s creator, in a security-restricted operation');

# --- a queue with a replay handler: its failures count like a table's ---------------
as_role('rd_op', q{
    CREATE FUNCTION rd.handle(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        IF (p->>'n')::int % 3 = 0 THEN
            RAISE EXCEPTION 'message % refused', p->>'n' USING ERRCODE = '22023';
        END IF;
    END $$;
    SELECT dlq_configure('rd_h', replay_handler => 'rd.handle(jsonb)');
});
q1(q{SELECT count(dlq_store('rd_h', jsonb_build_object('n', g), 'failed')) FROM generate_series(1, 30) g});
$task = as_role('rd_op', q{SELECT dlq_redrive_start('rd_h', 50)});
ok($node->poll_query_until('postgres',
		"SELECT state = 'finished' FROM dlq.redrive_tasks WHERE task_id = $task", 't'),
	'the handler task finishes');
is(q1(qq{SELECT moved || ' ' || failed FROM dlq.redrive_tasks WHERE task_id = $task}),
	'20 10', 'the handler\'s 10 failures are counted');
is(q1(q{SELECT string_agg(status || ':' || n, ' ' ORDER BY status)
          FROM (SELECT status, count(*) AS n FROM dlq.messages WHERE queue = 'rd_h' GROUP BY 1) s}),
	'pending:10 resolved:20', 'the handled messages are resolved, the refused ones pending');

# --- early stop of automatic retries -------------------------------------------
as_role('rd_op', q{
    CREATE TABLE rd.a (id int PRIMARY KEY, v int CHECK (v > 0));
    SELECT dlq_attach('rd.a', 'rd_auto');
    SELECT dlq_configure('rd_auto', auto_retry => true, retry_on => 'all', max_attempts => 100,
                         retry_base => '3 s', retry_max => '3 s', retry_stop_ratio => 0.5);
    INSERT INTO rd.a SELECT g, -g FROM generate_series(1, 20) g;
});
ok($node->poll_query_until('postgres',
		q{SELECT retry_stopped_at IS NOT NULL FROM dlq.queues WHERE queue = 'rd_auto'}, 't'),
	'automatic retries stop when they all fail');
like(q1(q{SELECT retry_stop_reason FROM dlq.queues WHERE queue = 'rd_auto'}),
	qr/^(\d+) of the last \1 automatic retries failed, above the queue's retry_stop_ratio 0.5$/, 'the queue says why');
is(q1(q{SELECT etl_status_json()->'retries_stopped'->0->>'queue'}), 'rd_auto',
	'etl_status_json shows the stop');
# While stopped, every message comes due: none may be retried until the resume.
q1(q{UPDATE dlq.messages SET next_retry_at = now() WHERE queue = 'rd_auto' AND status = 'pending'});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM dlq.events WHERE queue = 'rd_auto' AND kind = 'retry_resumed'}, 't'),
	'they resume by themselves');
is(q1(q{
    SELECT count(*) FROM dlq.events r, dlq.events s, dlq.events b
     WHERE s.queue = 'rd_auto' AND s.kind = 'retry_stopped'
       AND b.queue = 'rd_auto' AND b.kind = 'retry_resumed'
       AND r.queue = 'rd_auto' AND r.kind = 'retried' AND r.at > s.at AND r.at < b.at
       AND b.event_id = (SELECT min(event_id) FROM dlq.events WHERE queue = 'rd_auto' AND kind = 'retry_resumed')
       AND s.event_id = (SELECT min(event_id) FROM dlq.events WHERE queue = 'rd_auto' AND kind = 'retry_stopped')}),
	'0', 'no retry while stopped');
as_role('rd_op', 'ALTER TABLE rd.a DROP CONSTRAINT a_v_check');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 20 FROM dlq.messages WHERE queue = 'rd_auto' AND status = 'resolved'}, 't'),
	'once the table is fixed the retries resolve every message');

done_testing();
