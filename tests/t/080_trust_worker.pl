# Trust and the worker (DESIGN 7.1): automatic retries run as the queue's
# retry_role, the role that turned auto_retry on, in a security-restricted
# operation, and its privileges are checked again at every run; the target
# table's triggers run as the table's owner, whoever that role is; a writer's
# forged message is never inserted into the queue's table; a queue whose
# step fails never stalls the other queues (findings 1, 3 and 6 of issue 11).
# Every wait polls; nothing sleeps a fixed time.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('trust_worker');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
dlq.naptime = 100ms
dlq.replay_timeout = 1s
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dlq');
# As a role of its own session (a SET ROLE in the test's superuser session
# would let a hostile trigger RESET ROLE back to the superuser).
sub as_role
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

# A check's query: its output, or the error (so that every check reports).
sub query
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql);
	return $ret == 0 ? $out : "error: $err";
}

# Wait for a line in the server log after offset; false when it never comes.
sub log_shows
{
	my ($re, $offset) = @_;
	return eval { $node->wait_for_log($re, $offset); 1 } ? 1 : 0;
}

my $owner = $node->safe_psql('postgres', q{
    SELECT extowner::regrole FROM pg_extension WHERE extname = 'dlq'});

# --- finding 1: an operator's trigger does not run as the extension owner ----
# The reproduction of issue 11, as a role with dlq_operator and CREATE.
$node->safe_psql('postgres', q{
    CREATE ROLE tw_op LOGIN IN ROLE dlq_operator;
    CREATE ROLE tw_writer LOGIN IN ROLE dlq_writer;
    CREATE SCHEMA tw AUTHORIZATION tw_op;
    GRANT USAGE ON SCHEMA tw TO tw_writer;
});
as_role('tw_op', q{
    CREATE TABLE tw.op_t (id int PRIMARY KEY);
    CREATE TABLE tw.seen (who name, role_refused boolean);
    CREATE FUNCTION tw.op_pwn() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        refused boolean := false;
    BEGIN
        BEGIN EXECUTE 'ALTER ROLE tw_op SUPERUSER'; EXCEPTION WHEN others THEN NULL; END;
        BEGIN
            PERFORM pg_catalog.set_config('role', 'none', false);
        EXCEPTION WHEN insufficient_privilege THEN
            refused := SQLERRM LIKE 'cannot set parameter "role" within security-%';
        END;
        INSERT INTO tw.seen VALUES (current_user, refused);
        RETURN NEW;
    END $$;
    CREATE TRIGGER aaa_pwn BEFORE INSERT ON tw.op_t FOR EACH ROW EXECUTE FUNCTION tw.op_pwn();
    SELECT dlq_attach('tw.op_t', 'tw_q');
    SELECT dlq_configure('tw_q', auto_retry => true, retry_base => '1 second', retry_max => '1 second');
});
is(query(q{SELECT retry_role FROM dlq.queues WHERE queue = 'tw_q'}),
	'tw_op', 'the role that turned auto_retry on is the queue\'s retry_role');
as_role('tw_op', q{
    INSERT INTO tw.op_t VALUES (1); INSERT INTO tw.op_t VALUES (1); DELETE FROM tw.op_t;
    TRUNCATE tw.seen;
});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'resolved' FROM dlq.messages WHERE queue = 'tw_q'}),
	'the captured row is retried and re-applied by the worker');
is(query(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'tw_op'}),
	'f', 'the target\'s trigger did not make the operator a superuser');
is(query(q{SELECT who || ':' || role_refused FROM tw.seen}),
	'tw_op:true', 'the trigger ran as the table\'s owner (here also the retry_role), and could not SET ROLE');
is(query(q{
    SELECT count(*) FROM dlq.events WHERE queue = 'tw_q' AND kind = 'retried' AND actor = 'dlq worker'}),
	'1', 'the retry is audited as the worker\'s');

# --- the superuser variant (hostile review of 1.1, finding 1): a superuser
# turns auto_retry on for a writer's table; the worker retries as that
# superuser, but the table's trigger runs as the table's owner ------------
$node->safe_psql('postgres', q{
    CREATE SCHEMA tww AUTHORIZATION tw_writer;
});
as_role('tw_writer', q{
    CREATE TABLE tww.t (id int PRIMARY KEY);
    CREATE TABLE tww.seen (who name, made_superuser boolean);
    CREATE FUNCTION tww.pwn() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        made_superuser boolean := false;
    BEGIN
        BEGIN
            EXECUTE 'ALTER ROLE tw_writer SUPERUSER';
            made_superuser := true;
        EXCEPTION WHEN others THEN NULL;
        END;
        INSERT INTO tww.seen VALUES (current_user, made_superuser);
        RETURN NEW;
    END $$;
    CREATE TRIGGER aaa_pwn BEFORE INSERT ON tww.t FOR EACH ROW EXECUTE FUNCTION tww.pwn();
    SELECT dlq_attach('tww.t', 'tww_q');
});
is($node->safe_psql('postgres', q{
    SELECT retry_role FROM dlq_configure('tww_q', auto_retry => true, retry_base => '1 second',
                                         retry_max => '1 second')}),
	$node->safe_psql('postgres', 'SELECT current_user'),
	'a superuser turned auto_retry on: it is the retry_role');
as_role('tw_writer', q{
    INSERT INTO tww.t VALUES (1); INSERT INTO tww.t VALUES (1); DELETE FROM tww.t;
    TRUNCATE tww.seen;
});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'resolved' FROM dlq.messages WHERE queue = 'tww_q'}),
	'superuser variant: the captured row is retried and re-applied by the worker');
is(query(q{SELECT who || ':' || made_superuser FROM tww.seen}),
	'tw_writer:false', 'superuser variant: the trigger ran as the table\'s owner, not the superuser');
is(query(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'tw_writer'}),
	'f', 'superuser variant: the writer did not become a superuser');
is(query(q{SELECT count(*) FROM tww.t}), '1', 'superuser variant: the row is in the table');
$node->safe_psql('postgres', q{
    ALTER ROLE tw_writer NOSUPERUSER;
    SELECT dlq_configure('tww_q', auto_retry => false);
});

# Privileges are checked again at each run: without dlq_operator, or without
# INSERT on the target, the queue's retries are skipped with a warning.
# $revoke runs as a superuser, $revoke_own in tw_op's session right after the
# failing row is captured.
sub skipped_retry
{
	my ($id, $revoke, $revoke_own, $grant, $why, $name) = @_;
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', $revoke) if $revoke;
	as_role('tw_op', qq{
        BEGIN;
        INSERT INTO tw.op_t VALUES ($id); INSERT INTO tw.op_t VALUES ($id); DELETE FROM tw.op_t;
        $revoke_own;
        COMMIT;
    });
	ok(log_shows(qr/WARNING:  automatic retries of queue "tw_q" skipped: $why/, $offset),
		"$name: the skip is logged with the queue's name");
	ok($node->poll_query_until('postgres', qq{
        SELECT last_error LIKE '%queue "tw_q"%' FROM dlq.worker_status()}),
		"$name: and shown in dlq.worker_status()");
	is(query(qq{
        SELECT status || ':' || attempts FROM dlq.messages WHERE queue = 'tw_q' AND payload ->> 'id' = '$id'}),
		'pending:0', "$name: the message was not retried");
	$node->safe_psql('postgres', $grant);
	ok($node->poll_query_until('postgres', qq{
        SELECT status = 'resolved' FROM dlq.messages WHERE queue = 'tw_q' AND payload ->> 'id' = '$id'}),
		"$name: retried once the privilege is back");
	as_role('tw_op', 'DELETE FROM tw.op_t');
}
skipped_retry(2, 'REVOKE dlq_operator FROM tw_op', 'SELECT 1', 'GRANT dlq_operator TO tw_op',
	'role "tw_op" is no longer a member of dlq_operator', 'without dlq_operator');
skipped_retry(3, undef, 'REVOKE INSERT ON tw.op_t FROM tw_op',
	'SET ROLE tw_op; GRANT INSERT ON tw.op_t TO tw_op',
	'role "tw_op" lacks INSERT on table tw.op_t', 'without INSERT');
is(query(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'tw_op'}),
	'f', 'still no superuser');

# --- finding 3, the writer-only variant: a forged message in an auto-retry
# queue is never inserted into its table, by the worker either ---------------
as_role('tw_writer', q{SELECT dlq_store('tw_q', '{"id": 99}', 'forged')});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'review' FROM dlq.messages WHERE queue = 'tw_q' AND payload ->> 'id' = '99'}),
	'the forged message goes to review');
is(query(q{
    SELECT sqlstate || ':' || (error LIKE '%not captured from table tw.op_t%')
      FROM dlq.messages WHERE queue = 'tw_q' AND payload ->> 'id' = '99'}),
	'42501:true', 'with a recorded error');
is(query(q{SELECT count(*) FROM tw.op_t WHERE id = 99}), '0',
	'and its row is not in the table');

# --- a queue from 1.0 with auto_retry and no retry_role is suspended --------
$node->safe_psql('postgres', q{
    SELECT dlq_configure('tw_legacy', require_listener => false);
    UPDATE dlq.queues SET auto_retry = true, retry_base = '1 second', retry_max = '1 second'
     WHERE queue = 'tw_legacy';
});
my $offset = -s $node->logfile;
$node->safe_psql('postgres', q{SELECT dlq_store('tw_legacy', '{}', 'e')});
ok(log_shows(
		qr/WARNING:  automatic retries of queue "tw_legacy" skipped: no role turned them on since version 1.0/,
		$offset), 'a queue without a retry_role is not retried, with a warning');
is(query(q{SELECT status FROM dlq.messages WHERE queue = 'tw_legacy'}),
	'pending', 'its message stays pending');
as_role('tw_op', q{SELECT dlq_configure('tw_legacy', auto_retry => true)});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'replaying' FROM dlq.messages WHERE queue = 'tw_legacy'}),
	'an operator turning auto_retry on again resumes them');
$node->safe_psql('postgres', q{SELECT dlq_configure('tw_legacy', auto_retry => false)});

# --- finding 6: one queue's poison does not stall the others -----------------
# ovf needs the 4th backoff step of retry_factor 1000 (it overflowed);
# tw_poison's messages make every update fail; tw_ok's timed-out replay,
# in the same batch after both, is still recovered.
$node->safe_psql('postgres', q{
    SELECT dlq_configure('tw_ovf', max_attempts => 1000, retry_factor => 1000, require_listener => false);
    UPDATE dlq.queues SET auto_retry = true WHERE queue = 'tw_ovf';
    SELECT dlq_configure('tw_poison', require_listener => false);
    SELECT dlq_configure('tw_ok', require_listener => false);
    CREATE FUNCTION public.tw_poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.queue = 'tw_poison' AND OLD.status = 'replaying' AND NEW.status <> 'replaying' THEN
            RAISE EXCEPTION 'poisoned message %', NEW.message_id;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER tw_poison BEFORE UPDATE ON dlq.messages FOR EACH ROW EXECUTE FUNCTION public.tw_poison();
});
$offset = -s $node->logfile;
$node->safe_psql('postgres', q{
    BEGIN;
    SELECT dlq_store('tw_ovf', '{}', 'e');
    SELECT dlq_store('tw_poison', '{}', 'e');
    SELECT dlq_store('tw_ok', '{}', 'e');
    UPDATE dlq.messages SET status = 'replaying', claimed_by = 'dead', claim_expires_at = now() - interval '1 hour',
           attempts = CASE WHEN queue = 'tw_ovf' THEN 3 ELSE 1 END
     WHERE queue IN ('tw_ovf', 'tw_poison', 'tw_ok');
    COMMIT;
});
ok($node->poll_query_until('postgres', q{
    SELECT string_agg(queue || ':' || status, ' ' ORDER BY queue) = 'tw_ok:pending tw_ovf:pending tw_poison:replaying'
      FROM dlq.messages WHERE queue IN ('tw_ovf', 'tw_poison', 'tw_ok')}),
	'timed-out replays of the other queues are recovered while one queue fails');
is(query(q{
    SELECT next_retry_at - now() BETWEEN interval '50 minutes' AND interval '1 hour'
      FROM dlq.messages WHERE queue = 'tw_ovf'}), 't',
	'the backoff past the overflow is capped at retry_max');
ok(log_shows(qr/WARNING:  .*queue "tw_poison".*poisoned message/, $offset),
	'the failing queue is logged with its name');
ok($node->poll_query_until('postgres', q{
    SELECT last_error LIKE '%queue "tw_poison"%poisoned message%' FROM dlq.worker_status()}),
	'and shown in dlq.worker_status()');
my $rounds = $node->safe_psql('postgres', 'SELECT rounds FROM dlq.worker_status()');
ok($node->poll_query_until('postgres', "SELECT rounds > $rounds + 2 FROM dlq.worker_status()"),
	'the worker goes on with its rounds');
# DROP TRIGGER locks the partitions (last first) but not the parent: the lock
# on the parent first keeps it from deadlocking with the worker's steps.
$node->safe_psql('postgres', q{
    BEGIN;
    LOCK TABLE dlq.messages IN ACCESS EXCLUSIVE MODE;
    DROP TRIGGER tw_poison ON dlq.messages;
    COMMIT;
});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'pending' FROM dlq.messages WHERE queue = 'tw_poison'}),
	'once the cause is gone that queue is recovered too');
is(query(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'tw_op'}),
	'f', 'tw_op never became a superuser');
isnt($owner, 'tw_op', 'the extension owner is someone else');

$node->stop;
done_testing();
