# The worker's throttle (dlq.worker_cost_limit, dlq.worker_cost_delay) and
# its progress in dlq.worker_status(): with a small cost limit the worker
# takes small batches and sleeps between them, the step under way is visible
# while it does, the backlog is still worked off, a reload applies new
# values in the middle of a step, a DROP DATABASE does not wait for a
# throttled step, and the settings keep to their bounds.  Every wait polls.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('throttle');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
dlq.naptime = 100ms
dlq.batch_size = 50
dlq.worker_cost_limit = 10
dlq.worker_cost_delay = 200ms
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dlq');
ok($node->poll_query_until('postgres', 'SELECT running FROM dlq.worker_status()'),
	'the worker runs');

sub reload
{
	my ($sql) = @_;
	$node->safe_psql('postgres', "$sql; SELECT pg_reload_conf()");
}

# --- settings: defaults, bounds, reload only -----------------------------------
my $plain = PostgreSQL::Test::Cluster->new('throttle_plain');
$plain->init;
$plain->append_conf('postgresql.conf', "shared_preload_libraries = 'dlq'\n");
$plain->start;
is($plain->safe_psql('postgres', 'SHOW dlq.worker_cost_limit'), '1000', 'dlq.worker_cost_limit defaults to 1000');
is($plain->safe_psql('postgres', 'SHOW dlq.worker_cost_delay'), '500ms', 'dlq.worker_cost_delay defaults to 500ms');
$plain->stop;

my ($ret, $out, $err);
for my $bad (['dlq.worker_cost_limit', '-1', '0 .. 1000000'],
	['dlq.worker_cost_limit', '1000001', '0 .. 1000000'],
	['dlq.worker_cost_delay', '-1', '0 .. 10000'],
	['dlq.worker_cost_delay', '10001', '0 .. 10000'])
{
	my ($name, $value, $range) = @$bad;
	($ret, $out, $err) = $node->psql('postgres', "ALTER SYSTEM SET $name = $value");
	like($err, qr/\Q$value\E( ms)? is outside the valid range for parameter "\Q$name\E" \(\Q$range\E\)/,
		"$name = $value is refused");
}
($ret, $out, $err) = $node->psql('postgres', 'SET dlq.worker_cost_limit = 0');
like($err, qr/parameter "dlq.worker_cost_limit" cannot be changed now/,
	'dlq.worker_cost_limit cannot be SET in a session');
($ret, $out, $err) = $node->psql('postgres', q{SET dlq.worker_cost_delay = '1ms'});
like($err, qr/parameter "dlq.worker_cost_delay" cannot be changed now/,
	'dlq.worker_cost_delay cannot be SET in a session');
is($node->safe_psql('postgres', 'SHOW dlq.worker_cost_delay'), '200ms',
	'the configured delay is in force');

# --- who may read the progress ----------------------------------------------------
$node->safe_psql('postgres', q{
    CREATE ROLE thr_reader LOGIN IN ROLE dlq_reader;
    CREATE ROLE thr_nobody LOGIN;
});
is($node->safe_psql('postgres', q{
    SELECT has_function_privilege('thr_reader', 'dlq.worker_status()', 'EXECUTE'),
           has_function_privilege('thr_nobody', 'dlq.worker_status()', 'EXECUTE'),
           NOT EXISTS (SELECT FROM pg_proc p, aclexplode(p.proacl) a
                        WHERE p.oid = 'dlq.worker_status()'::regprocedure AND a.grantee = 0)}),
	't|f|t', 'dlq.worker_status() is granted to dlq_reader, not to PUBLIC');
is($node->safe_psql('postgres', 'SELECT step IS NULL OR step IS NOT NULL FROM dlq.worker_status()',
		extra_params => [ '-U', 'thr_reader' ]), 't', 'a dlq_reader reads the progress');

# --- a throttled expiry: small batches, sleeps, visible progress ------------------
# 300 messages past expiry, 10 per batch and 200 ms of sleep after each:
# about 6 s, long enough to be seen in the middle.
$node->safe_psql('postgres', q{
    SELECT dlq_store('thr_q', jsonb_build_object('i', i), 'failed') FROM generate_series(1, 300) i;
    UPDATE dlq.messages SET expires_at = now() - interval '1 second' WHERE queue = 'thr_q';
});
ok($node->poll_query_until('postgres', q{
    SELECT step = 'expire' AND step_queue IS NULL AND step_started_at <= now()
           AND step_done BETWEEN 10 AND 290 AND throttle_sleep > interval '0'
      FROM dlq.worker_status()}),
	'in the middle of the expiry: step, messages done and throttle sleep are visible');
ok($node->poll_query_until('postgres', 'SELECT throttled FROM dlq.worker_status()'),
	'the worker is seen sleeping for its cost limit');
my $mid = $node->safe_psql('postgres', q{
    SELECT count(*) FROM dlq.messages WHERE queue = 'thr_q' AND status = 'expired'});
cmp_ok($mid, '<', 300, "the backlog goes out gradually ($mid of 300 expired when seen)");
# A long naptime keeps the round that did it the last one for a while.
reload(q{ALTER SYSTEM SET dlq.naptime = '1min'});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 300 FROM dlq.messages WHERE queue = 'thr_q' AND status = 'expired'}),
	'the throttled worker expires the whole backlog');
is($node->safe_psql('postgres', q{
    SELECT max(message_count), sum(message_count) FROM dlq.events
     WHERE queue = 'thr_q' AND kind = 'expired'}),
	'10|300', 'no batch is larger than dlq.worker_cost_limit');
ok($node->poll_query_until('postgres', q{
    SELECT step IS NULL AND step_queue IS NULL AND step_started_at IS NULL AND step_done IS NULL
           AND NOT throttled AND last_throttle_sleep > interval '1 second'
      FROM dlq.worker_status()}),
	'between rounds: no step, and the last round slept for its cost limit');
reload(q{ALTER SYSTEM RESET dlq.naptime});
ok($node->poll_query_until('postgres', q{
    SELECT rounds > 2 AND last_throttle_sleep = interval '0' FROM dlq.worker_status()}),
	'the next round, with nothing to do, did not sleep');

# --- a reload applies in the middle of a step --------------------------------------
# 2000 messages at 10 per second would take over three minutes; turning the
# throttle off by a reload lets the rest go in full batches (dlq.batch_size).
reload(q{ALTER SYSTEM SET dlq.worker_cost_delay = '1s'});
ok($node->poll_query_until('postgres', q{SELECT current_setting('dlq.worker_cost_delay') = '1s'}),
	'the longer delay is loaded');
$node->safe_psql('postgres', q{
    SELECT dlq_store('thr_big', jsonb_build_object('i', i), 'failed') FROM generate_series(1, 2000) i;
    UPDATE dlq.messages SET expires_at = now() - interval '1 second' WHERE queue = 'thr_big';
});
ok($node->poll_query_until('postgres', q{
    SELECT step = 'expire' AND step_done >= 20 AND throttled FROM dlq.worker_status()}),
	'the big backlog is being expired slowly');
is($node->safe_psql('postgres', q{
    SELECT max(message_count) FROM dlq.events WHERE queue = 'thr_big' AND kind = 'expired'}),
	'10', 'in batches of dlq.worker_cost_limit');
reload(q{ALTER SYSTEM SET dlq.worker_cost_limit = 0});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 2000 FROM dlq.messages WHERE queue = 'thr_big' AND status = 'expired'}),
	'after the reload the rest is expired');
is($node->safe_psql('postgres', q{
    SELECT max(message_count) FROM dlq.events WHERE queue = 'thr_big' AND kind = 'expired'}),
	'50', 'in full batches: the reload applied in the middle of the step');

# Back to a small limit: another reload, the other way.
reload(q{ALTER SYSTEM SET dlq.worker_cost_limit = 7; ALTER SYSTEM SET dlq.worker_cost_delay = '100ms'});
$node->safe_psql('postgres', q{
    UPDATE dlq.queues SET resolved_retention = '0' WHERE queue = 'thr_q';
});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 0 FROM dlq.messages WHERE queue = 'thr_q'}),
	'the purge is throttled too, and finishes');
is($node->safe_psql('postgres', q{
    SELECT max(message_count), sum(message_count) FROM dlq.events WHERE queue = 'thr_q' AND kind = 'purged'}),
	'7|300', 'in batches of the reloaded dlq.worker_cost_limit');

# --- DROP DATABASE does not wait for a throttled step ------------------------------
# A step of 2000 messages at 10 per second outlasts the 5 s DROP DATABASE
# waits for other sessions: the worker must notice it while it sleeps.
reload(q{ALTER SYSTEM SET dlq.worker_cost_limit = 10; ALTER SYSTEM SET dlq.worker_cost_delay = '1s'});
$node->safe_psql('postgres', 'CREATE DATABASE thr_drop');
$node->safe_psql('thr_drop', q{
    CREATE EXTENSION dlq;
    SELECT dlq_store('thr_d', jsonb_build_object('i', i), 'failed') FROM generate_series(1, 2000) i;
    UPDATE dlq.messages SET expires_at = now() - interval '1 second' WHERE queue = 'thr_d';
});
ok($node->poll_query_until('thr_drop', q{
    SELECT step = 'expire' AND step_done >= 10 FROM dlq.worker_status()}),
	'the worker of thr_drop is in a throttled step');
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE thr_drop');
is($ret, 0, 'DROP DATABASE succeeds while the worker is in a throttled step')
  or diag($err);
ok($node->log_contains(qr/dlq worker for database "thr_drop" stopping: the database is being dropped/),
	'the throttled worker made way for it');

# --- SIGTERM in a throttle sleep ends the worker; the launcher starts another ----
$node->safe_psql('postgres', q{
    SELECT dlq_store('thr_t', jsonb_build_object('i', i), 'failed') FROM generate_series(1, 300) i;
    UPDATE dlq.messages SET expires_at = now() - interval '1 second' WHERE queue = 'thr_t';
});
ok($node->poll_query_until('postgres', 'SELECT throttled FROM dlq.worker_status()'),
	'the worker sleeps for its cost limit');
my $pid = $node->safe_psql('postgres', 'SELECT pid FROM dlq.worker_status()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok($node->poll_query_until('postgres', qq{
    SELECT running AND pid <> $pid FROM dlq.worker_status()}),
	'SIGTERM ends a sleeping worker; another takes over');
reload(q{ALTER SYSTEM RESET dlq.worker_cost_limit; ALTER SYSTEM RESET dlq.worker_cost_delay});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 300 FROM dlq.messages WHERE queue = 'thr_t' AND status = 'expired'}),
	'and finishes the step');
is($node->safe_psql('postgres', q{
    SELECT sum(message_count) FROM dlq.events WHERE queue = 'thr_t' AND kind = 'expired'}),
	'300', 'every message expired exactly once');

$node->stop;
done_testing();
