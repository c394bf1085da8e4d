# The background worker looks after a database on its own: it shows in
# pg_stat_activity, expires pending messages past expires_at, purges closed
# messages and audit events past their retention, gives the messages of a
# dead consumer back, requests automatic retries when they are due, alerts
# once per cooldown, and goes on when a batch fails.  Every wait polls;
# nothing sleeps a fixed time.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('worker');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
dlq.naptime = 100ms
dlq.batch_size = 50
dlq.replay_timeout = 1s
dlq.partition_interval = 1s    # closed messages leave slot by slot: one-second slots
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dlq');

# Wait until the worker has finished $n more rounds: everything due before
# the call has then been handled.
sub wait_rounds
{
	my ($db, $n) = @_;
	my $now = $node->safe_psql($db, 'SELECT coalesce((SELECT rounds FROM dlq.worker_status()), 0)');
	my $want = $now + $n;
	ok($node->poll_query_until($db, "SELECT (SELECT rounds FROM dlq.worker_status()) >= $want"),
		"worker ran $n more rounds in $db");
}

# --- visible as "dlq worker" ------------------------------------------------
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 1 FROM pg_stat_activity
     WHERE backend_type = 'dlq worker' AND application_name = 'dlq worker' AND datname = 'postgres'}),
	'the worker shows in pg_stat_activity as dlq worker');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dlq launcher'}),
	'1', 'one launcher');
is($node->safe_psql('postgres', q{
    SELECT running AND pid = (SELECT pid FROM pg_stat_activity WHERE backend_type = 'dlq worker')
      FROM dlq.worker_status()}), 't', 'dlq.worker_status() names the running worker');
is($node->safe_psql('postgres', 'SHOW dlq.naptime'), '100ms', 'dlq.naptime is SHOW-able');

# --- expiry -----------------------------------------------------------------
$node->safe_psql('postgres', q{
    SELECT dlq_store('w_exp', jsonb_build_object('i', i), 'failed ' || i) FROM generate_series(1, 120) i;
    UPDATE dlq.messages SET expires_at = now() - interval '1 second'
     WHERE queue = 'w_exp' AND (payload ->> 'i')::int <= 110;
});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 110 FROM dlq.messages WHERE queue = 'w_exp' AND status = 'expired'}),
	'pending messages past expires_at are expired within a few naptimes');
is($node->safe_psql('postgres', q{
    SELECT count(*) FILTER (WHERE status = 'pending'),
           count(*) FILTER (WHERE status = 'expired' AND resolved_at IS NOT NULL AND next_retry_at IS NULL)
      FROM dlq.messages WHERE queue = 'w_exp'}), '10|110',
	'messages not yet due stay pending; expired ones carry resolved_at');
# batch_size 50: three batches, each its own transaction and event.
is($node->safe_psql('postgres', q{
    SELECT count(*), sum(message_count), bool_and(actor = 'dlq worker'),
           bool_and(message_ids IS NOT NULL AND cardinality(message_ids) = message_count)
      FROM dlq.events WHERE queue = 'w_exp' AND kind = 'expired'}), '3|110|t|t',
	'expiry is audited per batch with counts and ids');

# --- purge respects retention -----------------------------------------------
$node->safe_psql('postgres', q{
    SELECT dlq_store('w_keep', jsonb_build_object('i', i), 'failed') FROM generate_series(1, 5) i;
    UPDATE dlq.queues SET resolved_retention = '1 hour' WHERE queue = 'w_keep';
    UPDATE dlq.queues SET resolved_retention = '10 minutes' WHERE queue = 'w_exp';
    -- purged, not archived (tests/t/075_archive.pl)
    UPDATE dlq.queues SET archive_retention = '0' WHERE queue IN ('w_keep', 'w_exp');
    UPDATE dlq.messages SET status = 'resolved', resolved_at = now() - interval '30 minutes'
     WHERE queue = 'w_keep';
    UPDATE dlq.messages SET resolved_at = now() - interval '11 minutes'
     WHERE queue = 'w_exp' AND status = 'expired' AND (payload ->> 'i')::int <= 100;
});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 10 FROM dlq.messages WHERE queue = 'w_exp' AND status = 'expired'}),
	'closed messages past their queue retention are purged');
wait_rounds('postgres', 3);
is($node->safe_psql('postgres', q{
    SELECT (SELECT count(*) FROM dlq.messages WHERE queue = 'w_keep' AND status = 'resolved'),
           (SELECT count(*) FROM dlq.messages WHERE queue = 'w_exp')}), '5|20',
	'messages within retention, and pending ones, are kept');
is($node->safe_psql('postgres', q{
    SELECT sum(message_count), sum((detail ->> 'expired')::int)
      FROM dlq.events WHERE queue = 'w_exp' AND kind = 'purged'}), '100|100',
	'the purge is audited with counts');

# Audit events past dlq.events_retention go, and that is audited too.
$node->safe_psql('postgres', q{
    INSERT INTO dlq.events (actor, kind, queue, at) VALUES
        ('tester', 'configured', 'w_old', now() - interval '2 hours'),
        ('tester', 'configured', 'w_old', now() - interval '2 hours'),
        ('tester', 'configured', 'w_old', now() - interval '10 minutes');
    ALTER SYSTEM SET dlq.events_retention = '1h';
    SELECT pg_reload_conf();
});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM dlq.events WHERE queue = 'w_old'}),
	'audit events older than dlq.events_retention are purged');
is($node->safe_psql('postgres', q{
    SELECT sum((detail ->> 'events')::int) FROM dlq.events WHERE kind = 'purged' AND queue IS NULL}),
	'2', 'the event purge is audited');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET dlq.events_retention; SELECT pg_reload_conf()');

# --- a consumer that dies holding claims gets its messages back -------------
$node->safe_psql('postgres', q{
    SELECT dlq_store('w_claim', jsonb_build_object('i', i), 'failed') FROM generate_series(1, 4) i;
    -- a claim that expired long ago, with attempts left
    UPDATE dlq.messages SET status = 'replaying', attempts = 1, claimed_by = 'dead consumer',
           claim_expires_at = now() - interval '1 hour'
     WHERE queue = 'w_claim' AND payload ->> 'i' = '1';
    -- the same with its last attempt used up
    UPDATE dlq.messages SET status = 'replaying', attempts = 5, claimed_by = 'dead consumer',
           claim_expires_at = now() - interval '1 hour'
     WHERE queue = 'w_claim' AND payload ->> 'i' = '2';
    -- a live claim
    UPDATE dlq.messages SET status = 'replaying', attempts = 1, claimed_by = 'live consumer',
           claim_expires_at = now() + interval '1 hour'
     WHERE queue = 'w_claim' AND payload ->> 'i' = '3';
    -- a replay nobody claimed: times out dlq.replay_timeout after it was requested
    UPDATE dlq.queues SET require_listener = false WHERE queue = 'w_claim';
    SELECT dlq_reprocess(array_agg(message_id)) FROM dlq.messages
     WHERE queue = 'w_claim' AND payload ->> 'i' = '4';
});
is($node->safe_psql('postgres', q{
    SELECT status || ':' || attempts || ':' || (claim_expires_at IS NULL) FROM dlq.messages
     WHERE queue = 'w_claim' AND payload ->> 'i' = '4'}), 'replaying:1:true',
	'an unclaimed replay, requested through dlq_reprocess');
ok($node->poll_query_until('postgres', q{
    SELECT string_agg(payload ->> 'i' || ':' || status, ' ' ORDER BY payload ->> 'i')
           = '1:pending 2:review 3:replaying 4:pending'
      FROM dlq.messages WHERE queue = 'w_claim'}),
	'expired claims and abandoned replays come back: pending, or review at max_attempts');
is($node->safe_psql('postgres', q{
    SELECT count(*) FROM dlq.messages
     WHERE queue = 'w_claim' AND status <> 'replaying'
       AND (claimed_by IS NOT NULL OR claim_expires_at IS NOT NULL)}), '0',
	'returned messages are no longer claimed');
is($node->safe_psql('postgres', q{
    SELECT sum(message_count), sum((detail ->> 'pending')::int), sum((detail ->> 'review')::int)
      FROM dlq.events WHERE queue = 'w_claim' AND kind = 'timed_out'}), '3|2|1',
	'timeouts are audited');

# --- automatic retries --------------------------------------------------------
# Retries go through dlq_reprocess (replay module).  A long replay_timeout
# keeps the retried messages replaying until the test lets their consumer die.
$node->safe_psql('postgres', q{ALTER SYSTEM SET dlq.replay_timeout = '1h'; SELECT pg_reload_conf()});
wait_rounds('postgres', 2);
$node->safe_psql('postgres', q{
    SELECT dlq_store('w_retry', '{}', 'first');
    UPDATE dlq.queues SET auto_retry = true, retry_on = 'all', retry_role = current_user::regrole, require_listener = false,
           retry_base = '1 hour', retry_factor = 3, retry_max = '1 day', max_attempts = 3
     WHERE queue = 'w_retry';
    SELECT dlq_store('w_retry', jsonb_build_object('i', i), 'failed') FROM generate_series(1, 3) i;
});
# Stored on an auto_retry queue: first retry after retry_base, +-10%.
is($node->safe_psql('postgres', q{
    SELECT count(*) FROM dlq.messages
     WHERE queue = 'w_retry' AND payload ? 'i'
       AND next_retry_at - stored_at BETWEEN interval '54 minutes' AND interval '66 minutes'}),
	'3', 'dlq_store schedules the first retry after retry_base');
$node->safe_psql('postgres', q{
    UPDATE dlq.messages SET next_retry_at = now() - interval '1 second'
     WHERE queue = 'w_retry' AND payload ->> 'i' IN ('1', '2');
});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 2 FROM dlq.messages WHERE queue = 'w_retry' AND status = 'replaying'}),
	'due messages of an auto_retry queue are retried');
wait_rounds('postgres', 2);
is($node->safe_psql('postgres', q{
    SELECT string_agg(coalesce(payload ->> 'i', '-') || ':' || status || ':' || attempts, ' '
                      ORDER BY message_id)
      FROM dlq.messages WHERE queue = 'w_retry'}),
	'-:pending:0 1:replaying:1 2:replaying:1 3:pending:0',
	'messages not yet due, and queues without auto_retry, are left alone');
is($node->safe_psql('postgres', q{
    SELECT count(*), sum(message_count), bool_and(request_id IS NOT NULL)
      FROM dlq.events WHERE queue = 'w_retry' AND kind = 'retried'}), '1|2|t',
	'one retry request per queue and round, audited with its request id');
# The retry's consumer dies: the message comes back with the next backoff step,
# retry 2 = retry_base * retry_factor = 3 hours (+-10%).
$node->safe_psql('postgres', q{
    UPDATE dlq.messages SET claimed_by = 'c', claim_expires_at = now() - interval '1 hour'
     WHERE queue = 'w_retry' AND status = 'replaying';
});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 2 FROM dlq.messages WHERE queue = 'w_retry' AND payload ? 'i' AND status = 'pending'
       AND next_retry_at - now() BETWEEN interval '161 minutes' AND interval '199 minutes'}),
	'a timed-out retry is scheduled again after retry_base * retry_factor');
# A paused queue is not retried.
$node->safe_psql('postgres', q{
    UPDATE dlq.queues SET paused = true WHERE queue = 'w_retry';
    UPDATE dlq.messages SET next_retry_at = now() - interval '1 second'
     WHERE queue = 'w_retry' AND payload ->> 'i' = '3';
});
wait_rounds('postgres', 2);
is($node->safe_psql('postgres', q{
    SELECT status FROM dlq.messages WHERE queue = 'w_retry' AND payload ->> 'i' = '3'}),
	'pending', 'a paused queue is not retried');
$node->safe_psql('postgres', q{UPDATE dlq.queues SET paused = false WHERE queue = 'w_retry'});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'replaying' FROM dlq.messages WHERE queue = 'w_retry' AND payload ->> 'i' = '3'}),
	'... and is retried once resumed');

# A retry that cannot be requested (no live consumer on a queue that needs
# one) is put off by one backoff step, not tried again every naptime.
$node->safe_psql('postgres', q{
    SELECT dlq_store('w_nolisten', '{}', 'first');
    UPDATE dlq.queues SET auto_retry = true, retry_on = 'all', retry_role = current_user::regrole, retry_base = '1 hour',
           retry_factor = 2
     WHERE queue = 'w_nolisten';
    SELECT dlq_store('w_nolisten', '{"i": 1}', 'failed');
    UPDATE dlq.messages SET next_retry_at = now() - interval '1 second'
     WHERE queue = 'w_nolisten' AND payload ? 'i';
});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'pending' AND next_retry_at - now() BETWEEN interval '50 minutes' AND interval '66 minutes'
      FROM dlq.messages WHERE queue = 'w_nolisten' AND payload ? 'i'}),
	'a retry refused for want of a live consumer is put off by a backoff step');
like($node->safe_psql('postgres', 'SELECT last_error FROM dlq.worker_status()'),
	qr/^requesting automatic retries for queue "w_nolisten": /, 'and the refusal is recorded');

# --- alerts: once per cooldown ------------------------------------------------
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN dlq_alerts');
$node->safe_psql('postgres', q{
    SELECT dlq_store('w_alert', jsonb_build_object('i', i), 'failed') FROM generate_series(1, 3) i;
    SELECT dlq_store('w_crit', jsonb_build_object('i', i), 'failed') FROM generate_series(1, 10) i;
    UPDATE dlq.queues SET alert_threshold = 4, alert_cooldown = '1 hour' WHERE queue = 'w_alert';
    UPDATE dlq.queues SET alert_threshold = 2, alert_cooldown = '1 hour' WHERE queue = 'w_crit';
});
wait_rounds('postgres', 2);
is($node->safe_psql('postgres', q{SELECT last_alert_at IS NULL FROM dlq.queues WHERE queue = 'w_alert'}),
	't', 'no alert below the threshold');
$node->safe_psql('postgres', q{SELECT dlq_store('w_alert', '{"i": 4}', 'failed')});
ok($node->poll_query_until('postgres',
		q{SELECT last_alert_at IS NOT NULL FROM dlq.queues WHERE queue = 'w_alert'}),
	'an alert when the depth reaches the threshold');
my $first_alert = $node->safe_psql('postgres', q{SELECT last_alert_at FROM dlq.queues WHERE queue = 'w_alert'});
$node->safe_psql('postgres', q{SELECT dlq_store('w_alert', jsonb_build_object('i', i), 'failed') FROM generate_series(5, 30) i});
wait_rounds('postgres', 3);
my $notes = $listener->query_safe('SELECT 1');
my @w_alert = ($notes =~ /Asynchronous notification "dlq_alerts" with payload "(\{[^\n]*"queue": "w_alert"[^\n]*\})"/g);
my @w_crit = ($notes =~ /Asynchronous notification "dlq_alerts" with payload "(\{[^\n]*"queue": "w_crit"[^\n]*\})"/g);
is(scalar(@w_alert), 1, 'exactly one alert within the cooldown although the depth kept growing');
# 1.1 adds "at", "message" and "alert_id" (tests/t/063_metrics_totals.pl), so the keys are checked one by one.
like($w_alert[0] // '', qr/"depth": 4, "queue": "w_alert", .*"severity": "warning", "threshold": 4, "oldest_age_seconds": \d+/,
	'the alert carries queue, depth, threshold, severity and the oldest age');
is(scalar(@w_crit), 1, 'one alert for the second queue');
like($w_crit[0] // '', qr/"severity": "critical"/, 'severity is critical at 5x the threshold');
is($node->safe_psql('postgres', qq{
    SELECT last_alert_at = '$first_alert' FROM dlq.queues WHERE queue = 'w_alert'}),
	't', 'last_alert_at kept from the one alert');
is($node->safe_psql('postgres', q{SELECT count(*) FROM dlq.events WHERE kind = 'alert' AND message_count = 0 AND queue IN ('w_alert', 'w_crit')}), '2',
	'alerts change no message; since 1.1 each is an audit event (its alert_id)');
# Past the cooldown it fires again.
$node->safe_psql('postgres', q{UPDATE dlq.queues SET alert_cooldown = '0' WHERE queue = 'w_alert'});
ok($node->poll_query_until('postgres', qq{
    SELECT last_alert_at > '$first_alert' FROM dlq.queues WHERE queue = 'w_alert'}),
	'after the cooldown the alert fires again');
$notes = $listener->query_safe('SELECT 1');
like($notes, qr/Asynchronous notification "dlq_alerts" with payload "\{"at": "[^"]+", "depth": 30, "queue": "w_alert", .*"severity": "critical"/,
	'... with the current depth');
$listener->quit;

# --- a failing batch is logged and the worker goes on -------------------------
$node->safe_psql('postgres', q{
    CREATE FUNCTION public.w_poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.payload ? 'poison' AND NEW.status = 'expired' THEN
            RAISE EXCEPTION 'poisoned row %', NEW.message_id USING ERRCODE = 'P0001';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER w_poison BEFORE UPDATE ON dlq.messages FOR EACH ROW EXECUTE FUNCTION public.w_poison();
    SELECT dlq_store('w_bad', '{"poison": true}', 'failed');
    UPDATE dlq.messages SET expires_at = now() - interval '1 second' WHERE queue = 'w_bad';
});
ok($node->poll_query_until('postgres', q{
    SELECT errors > 0 AND last_error LIKE 'expiring messages: poisoned row %' FROM dlq.worker_status()}),
	'a failing batch is recorded in the worker status');
my $pid = $node->safe_psql('postgres', 'SELECT pid FROM dlq.worker_status()');
# Other steps go on while expiry keeps failing.
$node->safe_psql('postgres', q{
    UPDATE dlq.messages SET status = 'replaying', claimed_by = 'x', claim_expires_at = now() - interval '1 hour'
     WHERE queue = 'w_claim' AND payload ->> 'i' = '1'});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'pending' FROM dlq.messages WHERE queue = 'w_claim' AND payload ->> 'i' = '1'}),
	'the other steps go on');
is($node->safe_psql('postgres', 'SELECT pid FROM dlq.worker_status()'), $pid, 'the worker did not exit');
ok($node->log_contains(qr/ERROR:  poisoned row/), 'the error is in the server log');
# DROP TRIGGER on a partitioned table locks the partitions (last first) before
# the parent, the worker's statements the parent first: lock the parent first.
$node->safe_psql('postgres',
	'BEGIN; LOCK TABLE dlq.messages IN ACCESS EXCLUSIVE MODE; DROP TRIGGER w_poison ON dlq.messages; COMMIT');
ok($node->poll_query_until('postgres', q{
    SELECT status = 'expired' FROM dlq.messages WHERE queue = 'w_bad'}),
	'once the cause is gone the batch succeeds');

# --- dlq.worker_role is ignored: retries run as each queue's retry_role ------
my $offset = -s $node->logfile;
$node->safe_psql('postgres', q{ALTER SYSTEM SET dlq.worker_role = 'w_nobody'; SELECT pg_reload_conf()});
ok($node->wait_for_log(qr/WARNING:  dlq.worker_role is ignored/, $offset),
	'a dlq.worker_role setting is reported as ignored');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET dlq.worker_role; SELECT pg_reload_conf()});

$node->stop;
done_testing();
