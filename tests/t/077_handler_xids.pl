# The XIDs of a handler replay (issue 14, DESIGN 7.3): dlq_reprocess_all of
# 2000 messages through a replay_handler, 1% of them failing, catches each
# failure on its own message yet consumes at most 5% of the messages in XIDs
# (a PL/pgSQL loop with one EXCEPTION block per message uses one each: the
# test measures that too, so the instrument is seen to count subtransactions).
# The outcome is exact: the failing messages are the ones recorded as failed
# (pending, one attempt, the handler's error, one replay_failed event with
# their ids), every other one is resolved once, and the handler's side effects
# are kept for the successes only, even though the handler writes before it
# raises.
#
# The count must be exact, so nothing else may take an XID meanwhile: the
# worker serves only the database "postgres", which has no extension (it
# leaves it), and autovacuum is off (its ANALYZE writes pg_statistic).  A
# control transaction with a known number of subtransactions checks that.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $messages = 2000;
my $failing = 20;

my $node = PostgreSQL::Test::Cluster->new('handler_xids');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
dlq.databases = 'postgres'
autovacuum = off
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE xids');
$node->safe_psql('xids', 'CREATE EXTENSION dlq');

sub sql { return $node->safe_psql('xids', $_[0]); }

# The XIDs consumed by a statement: pg_current_xact_id() in a transaction of
# its own before and after, less the "after" one's own.
sub xids_of
{
	my ($stmt) = @_;
	my $before = sql('SELECT pg_current_xact_id()');
	my $out = sql($stmt);
	my $after = sql('SELECT pg_current_xact_id()');
	return ($after - $before - 1, $out);
}

is(sql(q{SELECT count(*) FROM pg_stat_activity WHERE datname = 'xids' AND backend_type <> 'client backend'}),
	'0', 'no background process works in the test database');

# The handler writes its side effect first, then raises for a failing message,
# so a failure's effect must be rolled back on its own.  A sequence (not
# transactional) counts every call, the re-runs of a split batch included.
sql(qq{
    CREATE TABLE done (n int PRIMARY KEY);
    CREATE SEQUENCE calls;
    CREATE FUNCTION handle(p jsonb) RETURNS void LANGUAGE plpgsql AS \$\$
    BEGIN
        PERFORM nextval('calls');
        INSERT INTO done VALUES ((p ->> 'n')::int);
        IF p ? 'fail' THEN
            RAISE EXCEPTION 'message % refused', p ->> 'n' USING ERRCODE = 'P0001';
        END IF;
    END
    \$\$;
    SELECT dlq_configure('xq', max_attempts => 3, require_listener => false,
                         replay_handler => 'handle(jsonb)'::regprocedure);
    SELECT count(dlq_store('xq', jsonb_build_object('n', i) ||
                                 CASE WHEN i % 100 = 0 THEN '{"fail": true}'::jsonb ELSE '{}' END,
                           'downstream unavailable'))
      FROM generate_series(1, $messages) i;
    -- The same messages for the PL/pgSQL loop, in a table of its own.
    CREATE TABLE loop_messages AS
    SELECT message_id, payload, status, attempts FROM dlq.messages WHERE queue = 'xq';
    CREATE TABLE loop_done (n int PRIMARY KEY);
    CREATE TABLE control (n int PRIMARY KEY);
});

# The control: 10 subtransactions that write, plus the top level.
my ($control) = xids_of(q{
    DO $$
    BEGIN
        FOR i IN 1..10 LOOP
            BEGIN
                INSERT INTO control VALUES (i);
            EXCEPTION WHEN OTHERS THEN NULL;
            END;
        END LOOP;
    END $$});
is($control, 11, 'the count is exact: 10 writing subtransactions and their transaction take 11 XIDs');

# --- the handler replay --------------------------------------------------------
my ($xids, $summary) = xids_of(q{
    SELECT r ->> 'replayed' || ' ' || (r ->> 'failed') FROM dlq_reprocess_all('xq') r});
is($summary, ($messages - $failing) . " $failing", 'the summary: 1980 replayed, 20 failed');
my $limit = $messages * 5 / 100;
cmp_ok($xids, '<=', $limit, "XIDs of the handler replay: $xids for $messages messages (at most 5%)");
diag("handler replay: $xids XIDs, "
	  . sql(q{SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM calls}) . " handler calls for $messages messages");

is(sql(q{
    SELECT count(*) FILTER (WHERE status = 'resolved' AND attempts = 1 AND NOT payload ? 'fail')
           || ' ' ||
           count(*) FILTER (WHERE status = 'pending' AND attempts = 1 AND payload ? 'fail'
                              AND sqlstate = 'P0001'
                              AND error = 'message ' || (payload ->> 'n') || ' refused')
           || ' ' || count(*)
      FROM dlq.messages WHERE queue = 'xq'}),
	($messages - $failing) . " $failing $messages",
	'the successes are resolved after one attempt, the failing ones pending with their own error');
is(sql(q{
    SELECT array_agg(message_id ORDER BY message_id) = (SELECT message_ids FROM dlq.events
                                                         WHERE queue = 'xq' AND kind = 'replay_failed')
      FROM dlq.messages WHERE queue = 'xq' AND payload ? 'fail'}),
	't', 'one replay_failed event, with exactly the failing messages');
is(sql(q{
    SELECT string_agg(kind || ':' || message_count, ' ' ORDER BY kind)
      FROM dlq.events WHERE queue = 'xq' AND kind IN ('replayed', 'replay_failed')}),
	'replayed:' . ($messages - $failing) . " replay_failed:$failing",
	'the audit trail counts each message once');
is(sql(q{
    SELECT count(*) || ' ' || count(*) FILTER (WHERE m.payload ? 'fail')
      FROM done d JOIN dlq.messages m ON m.queue = 'xq' AND (m.payload ->> 'n')::int = d.n}),
	($messages - $failing) . ' 0',
	'the handler side effects are kept for the successes only');

# A second replay takes the failing ones only, and they fail again.
($xids, $summary) = xids_of(q{
    SELECT r ->> 'replayed' || ' ' || (r ->> 'failed') FROM dlq_reprocess_all('xq') r});
is($summary, "0 $failing", 'a second replay tries the 20 failing messages only');
diag("second replay, every message failing: $xids XIDs for $failing messages");
is(sql(q{SELECT count(*) FROM dlq.messages WHERE queue = 'xq' AND status = 'pending' AND attempts = 2}),
	$failing, 'they are pending after their second attempt');

# --- the instrument: one EXCEPTION block per message --------------------------
my ($loop_xids) = xids_of(q{
    DO $$
    DECLARE
        m record;
    BEGIN
        FOR m IN SELECT message_id, payload FROM loop_messages ORDER BY message_id LOOP
            BEGIN
                INSERT INTO loop_done VALUES ((m.payload ->> 'n')::int);
                IF m.payload ? 'fail' THEN
                    RAISE EXCEPTION 'message % refused', m.payload ->> 'n';
                END IF;
                UPDATE loop_messages SET status = 'resolved', attempts = attempts + 1
                 WHERE message_id = m.message_id;
            EXCEPTION WHEN OTHERS THEN
                UPDATE loop_messages SET attempts = attempts + 1 WHERE message_id = m.message_id;
            END;
        END LOOP;
    END $$});
cmp_ok($loop_xids, '>=', $messages,
	"a PL/pgSQL loop with one EXCEPTION block per message takes one XID per message: $loop_xids");
is(sql(q{SELECT count(*) FROM loop_done}), $messages - $failing, 'and keeps the same side effects');

done_testing();
