# Concurrency soak: about a minute of eight pgbench clients mixing every
# lifecycle call on five queues (plain, one that needs a live consumer, one
# with automatic retries, one with short retention and expiry, one replayed
# through a handler that fails at random, with automatic retries, early stop
# and a redrive task), with the
# background worker running, and one client backend killed with SIGKILL
# midway (the postmaster then restarts every backend, and the load starts
# again).  Afterwards every message must be accounted for, dlq.counts must
# equal count(*), nothing may stay replaying, and no client (nor the worker)
# may have seen an internal error or a constraint violation.
#
# Three writers (a role with dlq_writer only) store messages, two thirds of
# them with a dedup_key from a small range so that keys collide, and record
# each returned id in soak_stored in the same statement.  Five operators (a
# role with dlq_operator only) claim and ack, claim and nack, reprocess (by
# ids, with force, and _all), discard and resolve, one id at a time so that
# every audit event names its ids.
#
# Errors a client may legitimately get are caught in SQL by small wrappers
# (soak_nack, soak_reprocess) and recorded in soak_trapped; they are never
# logged.  So every ERROR the server logs for a soak client is unexpected,
# except deadlocks and serialization failures, which pgbench retries (and
# the "connection to client lost" a backend logs when pgbench drops a
# client it aborted, for an error reported on its own).
#
# What is asserted does not depend on timing: the load's duration only
# decides how much is exercised.  Every wait is bounded.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);

# Seconds of load before and after the kill (60 s in all).
my $half = $ENV{DLQ_SOAK_SECONDS} // 30;

my $node = PostgreSQL::Test::Cluster->new('soak');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
max_connections = 30
restart_after_crash = on
log_statement = none
log_line_prefix = '%m [%p] <%e> {%b} %q(%a) '
dlq.naptime = 1s
dlq.replay_timeout = 2s
dlq.batch_size = 50
dlq.partition_interval = 1s
dlq.archive_interval = 2s
});
$node->start;

# Queues: soak_a plain; soak_b needs a live consumer for replays; soak_r
# retries automatically, soon and often; soak_d expires pending messages
# after a few seconds and purges closed ones after one.  batch_size 50 keeps
# every worker event (expired, timed_out) under the 100 ids an event
# records; one-second slots of the ring of closed messages keep each purge
# (one event per queue and slot) under it too, and turn the ring every
# eight seconds, moving the closed messages of the other queues (seven days
# of retention) forward each time.
$node->safe_psql('postgres', q{
CREATE EXTENSION dlq;
CREATE ROLE soak_writer LOGIN IN ROLE dlq_writer;
CREATE ROLE soak_op LOGIN IN ROLE dlq_operator;

CREATE TABLE soak_stored (id bigint NOT NULL);
GRANT INSERT ON soak_stored TO soak_writer;
CREATE TABLE soak_trapped (op text NOT NULL, sqlstate text NOT NULL, message text);
GRANT INSERT ON soak_trapped TO soak_op;

CREATE FUNCTION soak_queue(i int) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT (ARRAY['soak_a', 'soak_b', 'soak_r', 'soak_d', 'soak_h'])[i] $$;

-- soak_h's replay handler: it writes, then fails one call in three at
-- random, so a message that passed may fail when its run is redone.  Owned
-- by the operator, who binds it; it runs as whoever replays.
CREATE TABLE soak_handled (p jsonb);
GRANT INSERT ON soak_handled TO soak_op;
CREATE FUNCTION soak_handle(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.soak_handled VALUES (p);
    IF random() < 0.33 THEN
        RAISE EXCEPTION 'soak: the handler failed' USING ERRCODE = 'P0001';
    END IF;
END $$;
ALTER FUNCTION soak_handle(jsonb) OWNER TO soak_op;

-- A consumer's nack may lose its message to an operator in between: a
-- dlq_resolve closes it (55000, "is not being replayed"), or it timed out
-- and was discarded (02000).  Both are the documented answers.
CREATE FUNCTION soak_nack(mid bigint) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RETURN dlq_nack(mid, 'soak: failed again', 'P0001');
EXCEPTION WHEN object_not_in_prerequisite_state OR SQLSTATE '02000' THEN
    INSERT INTO soak_trapped VALUES ('nack', SQLSTATE, SQLERRM);
    RETURN NULL;
END $$;

-- Replay a few messages from a random point of the queue: pending ones
-- (mode 0, 1), review ones with force (2), or the first pending ones with
-- dlq_reprocess_all (3).  soak_b refuses with DLQ01 while no consumer has
-- called dlq_listen (after the crash, until one does); any queue with 55000
-- while paused.
CREATE FUNCTION soak_reprocess(q text, mode int) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF mode = 3 THEN
        RETURN dlq_reprocess_all(q, max_messages => 5);
    END IF;
    ids := ARRAY(SELECT message_id FROM dlq.messages
                  WHERE queue = q AND status = CASE WHEN mode = 2 THEN 'review' ELSE 'pending' END::dlq.status
                    AND message_id >= (SELECT (random() * max(message_id))::bigint FROM dlq.messages)
                  ORDER BY message_id LIMIT 3);
    IF cardinality(ids) = 0 THEN
        RETURN NULL;
    END IF;
    RETURN dlq_reprocess(ids, force => mode = 2);
EXCEPTION WHEN object_not_in_prerequisite_state OR SQLSTATE 'DLQ01' THEN
    INSERT INTO soak_trapped VALUES ('reprocess', SQLSTATE, SQLERRM);
    RETURN NULL;
END $$;

REVOKE ALL ON FUNCTION soak_nack(bigint), soak_reprocess(text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION soak_nack(bigint), soak_reprocess(text, int) TO soak_op;
});
$node->safe_psql('postgres', q{
SELECT dlq_configure('soak_a', require_listener => false);
SELECT dlq_configure('soak_b', require_listener => true, max_attempts => 4);
SELECT dlq_configure('soak_r', require_listener => false, auto_retry => true, retry_on => 'all', max_attempts => 3,
                     retry_base => '1 second', retry_factor => 1.5, retry_max => '3 seconds',
                     resolved_retention => '2 seconds');
SELECT dlq_configure('soak_d', require_listener => false, max_attempts => 2,
                     retention => '4 seconds', resolved_retention => '1 second');
SELECT dlq_configure('soak_h', replay_handler => 'soak_handle(jsonb)', auto_retry => true,
                     retry_on => 'all', max_attempts => 4, retry_base => '1 second',
                     retry_max => '2 seconds', retry_stop_ratio => 0.6);
}, extra_params => [ '-U', 'soak_op' ]);
# soak_r's closed messages are archived (two-second slots of the archive
# ring) and purged from there two seconds later; the others are purged from
# the ring of closed messages as in 1.0 (tests/t/075_archive.pl).
$node->safe_psql('postgres', q{
UPDATE dlq.queues SET archive_retention = CASE queue WHEN 'soak_r' THEN interval '2 seconds' ELSE interval '0' END;
});

# --- the pgbench scripts ---------------------------------------------------------
my $dir = PostgreSQL::Test::Utils::tempdir;
my %scripts = (
	store => q{
\set q random(1, 5)
\set p random(1, 1000000)
INSERT INTO soak_stored (id)
SELECT dlq_store(soak_queue(:q), jsonb_build_object('p', :p), 'soak: failed',
                 component => 'c' || :q, sqlstate => 'P0001');
},
	store_dedup => q{
\set q random(1, 5)
\set k random(1, 8)
INSERT INTO soak_stored (id)
SELECT dlq_store(soak_queue(:q), jsonb_build_object('k', :k), 'soak: failed with a key',
                 dedup_key => 'k' || :k);
},
	ack => q{
\set q random(1, 5)
\if :q = 2
SELECT dlq_listen('soak_b');
\endif
SELECT count(*) AS n, coalesce(array_agg(message_id), '{}')::text AS ids
  FROM dlq_claim(soak_queue(:q), 3, '3 seconds') \gset
\if :n > 0
SELECT dlq_ack(':ids'::bigint[]);
\endif
},
	nack => q{
\set q random(1, 5)
\if :q = 2
SELECT dlq_listen('soak_b');
\endif
SELECT coalesce(min(message_id), 0) AS mid FROM dlq_claim(soak_queue(:q), 1, '3 seconds') \gset
\if :mid > 0
SELECT soak_nack(:mid);
\endif
},
	reprocess => q{
\set q random(1, 5)
\set mode random(0, 3)
SELECT soak_reprocess(soak_queue(:q), :mode);
},
	discard => q{
\set q random(1, 5)
SELECT dlq_discard(ARRAY[message_id])
  FROM (SELECT message_id FROM dlq.messages
         WHERE queue = soak_queue(:q)
           AND message_id >= (SELECT (random() * max(message_id))::bigint FROM dlq.messages)
         ORDER BY message_id LIMIT 1) x;
},
	resolve => q{
\set q random(1, 5)
SELECT dlq_resolve(ARRAY[message_id], 'soak')
  FROM (SELECT message_id FROM dlq.messages
         WHERE queue = soak_queue(:q)
           AND message_id >= (SELECT (random() * max(message_id))::bigint FROM dlq.messages)
         ORDER BY message_id LIMIT 1) x;
},);
for my $name (keys %scripts)
{
	open(my $fh, '>', "$dir/$name.sql") or die "could not write $dir/$name.sql: $!";
	print $fh $scripts{$name};
	close($fh);
}

# Start the two pgbench runs of one phase: 3 writers and 5 operators.  Their
# application_name tells their log lines apart.
sub start_load
{
	my ($phase, $seconds) = @_;
	my %runs = (
		writer => [ 3, 'soak_writer', "$dir/store.sql\@1", "$dir/store_dedup.sql\@2" ],
		op => [
			5, 'soak_op',
			"$dir/ack.sql\@3", "$dir/nack.sql\@3", "$dir/reprocess.sql\@3",
			"$dir/discard.sql\@1", "$dir/resolve.sql\@1"
		],);
	my @handles;
	for my $kind (sort keys %runs)
	{
		my ($clients, $user, @files) = @{ $runs{$kind} };
		my $out = "$dir/$phase-$kind.out";
		my $err = "$dir/$phase-$kind.err";
		local $ENV{PGAPPNAME} = "soak_${phase}_$kind";
		my $h = IPC::Run::start(
			[
				'pgbench', '-n', '-h', $node->host, '-p', $node->port,
				'-U', $user, '-c', $clients, '-T', $seconds, '--max-tries', '10',
				(map { ('-f', $_) } @files), 'postgres'
			],
			'<', \undef, '>', $out, '2>', $err,
			IPC::Run::timeout($seconds + 120));
		push @handles, { kind => $kind, h => $h, out => $out, err => $err };
	}
	return \@handles;
}

# Wait for the runs of a phase; returns { kind => [exit code, stdout, stderr] }.
sub finish_load
{
	my ($handles) = @_;
	my %res;
	for my $r (@$handles)
	{
		eval { $r->{h}->finish; };
		if ($@)
		{
			diag("pgbench $r->{kind}: $@");
			$r->{h}->kill_kill;
		}
		$res{ $r->{kind} } = [
			$r->{h}->result(0) // -1,
			PostgreSQL::Test::Utils::slurp_file($r->{out}),
			PostgreSQL::Test::Utils::slurp_file($r->{err})
		];
	}
	return \%res;
}

# SQL errors and client aborts pgbench printed.
sub pgbench_problems
{
	my ($stderr) = @_;
	my @sql = ($stderr =~ /^.*\bERROR:\s+.*$/mg);
	my @aborted = ($stderr =~ /^.*\bclient \d+ .*\baborted\b.*$/mg);
	return (\@sql, \@aborted);
}

# --- phase 1: load, then SIGKILL one operator's backend midway --------------------
my $t0 = time;
my $start = $node->safe_psql('postgres', 'SELECT now()');
# pgbench runs until the kill ends it; -T is only a bound.
my $load = start_load('p1', 3 * $half);
# Kill once every kind of call has been made and half of the load is done.
ok( $node->poll_query_until(
		'postgres', qq{
    SELECT now() >= '$start'::timestamptz + interval '$half seconds'
       AND (SELECT count(DISTINCT kind) FROM dlq.events
             WHERE kind IN ('acked', 'nacked', 'replay_requested', 'discarded', 'resolved')) = 5}),
	'phase 1: every kind of call made, half of the load done');
my $victim = $node->safe_psql(
	'postgres', q{
    SELECT pid FROM pg_stat_activity
     WHERE usename = 'soak_op' AND backend_type = 'client backend'
     ORDER BY state = 'active' DESC, pid LIMIT 1});
ok($victim =~ /^\d+$/, "an operator backend to kill ($victim)");
my $killed_at = time - $t0;
kill 'KILL', $victim;
my $p1 = finish_load($load);
diag(sprintf("phase 1: killed pid %s after %.1f s; pgbench ended after %.1f s",
		$victim, $killed_at, time - $t0));

ok( $node->poll_query_until('postgres', 'SELECT true'),
	'the server is back after the crash restart');
ok($node->log_contains(qr/server process \(PID $victim\) was terminated by signal 9/),
	'the kill made the postmaster restart every backend');
ok($node->poll_query_until('postgres', 'SELECT running FROM dlq.worker_status()'),
	'the worker runs again');

# Around the kill the clients lose their connections and pgbench aborts
# them: those aborts are expected, an SQL error is not.
for my $kind (sort keys %$p1)
{
	my ($rc, $out, $err) = @{ $p1->{$kind} };
	my ($sql, $aborted) = pgbench_problems($err);
	is(join("\n", @$sql), '', "phase 1 $kind: no SQL error reported by pgbench");
	my @other = grep { /ERROR:/ || !/perhaps the backend died|server closed the connection/ } @$aborted;
	is(join("\n", @other), '', "phase 1 $kind: clients aborted only by the lost connection");
	my ($tx) = $out =~ /number of transactions actually processed: (\d+)/;
	diag(sprintf("phase 1 %s: %s transactions, %d clients aborted by the kill",
			$kind, $tx // '?', scalar @$aborted));
}

# --- phase 2: load again on the restarted server -----------------------------------
# A redrive task replays soak_h through its handler, in the worker, while
# the clients replay, discard and resolve the same messages.
$node->safe_psql('postgres', q{SELECT dlq_redrive_start('soak_h', 20, force => true)},
	extra_params => [ '-U', 'soak_op' ]);
my $t1 = time;
$load = start_load('p2', $half);
my $p2 = finish_load($load);
diag(sprintf("phase 2: %.1f s", time - $t1));
for my $kind (sort keys %$p2)
{
	my ($rc, $out, $err) = @{ $p2->{$kind} };
	my ($sql, $aborted) = pgbench_problems($err);
	is(join("\n", @$sql), '', "phase 2 $kind: no SQL error reported by pgbench");
	is(join("\n", @$aborted), '', "phase 2 $kind: no client aborted");
	is($rc, 0, "phase 2 $kind: pgbench succeeded");
	my ($tx) = $out =~ /number of transactions actually processed: (\d+)/;
	my ($failed) = $out =~ /number of failed transactions: (\d+)/;
	my ($retried) = $out =~ /number of transactions retried: (\d+)/;
	diag(sprintf("phase 2 %s: %s transactions, %s failed, %s retried",
			$kind, $tx // '?', $failed // '?', $retried // '0'));
}

# A lease abandoned for sure: how many clients died holding one depends on
# the timing of the kill, so one more consumer claims and walks away; the
# worker must time these out while it finishes the rest.
$node->safe_psql('postgres', q{
    SELECT dlq_reprocess_all('soak_a', max_messages => 3);
    SELECT count(*) FROM dlq_claim('soak_a', 3, visibility => '1 second');
}, extra_params => [ '-U', 'soak_op' ]);

# --- quiesce -----------------------------------------------------------------------
# Without automatic retries no new replay starts, so every replaying message
# must come back within visibility + replay_timeout + a few naptimes.
$node->safe_psql('postgres', q{
    SELECT dlq_configure('soak_r', auto_retry => false);
    SELECT dlq_configure('soak_h', auto_retry => false);
    SELECT dlq_redrive_cancel(task_id) FROM dlq.redrive_tasks;
}, extra_params => [ '-U', 'soak_op' ]);
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 0 FROM dlq.messages WHERE status = 'replaying'}),
	'no message stays replaying past the timeout once the load stopped');
my $rounds = $node->safe_psql('postgres', 'SELECT rounds FROM dlq.worker_status()');
ok($node->poll_query_until('postgres', "SELECT rounds >= $rounds + 2 FROM dlq.worker_status()"),
	'the worker completed two more rounds');

# --- what happened -------------------------------------------------------------------
diag("messages by queue and status:\n" . $node->safe_psql('postgres', q{
    SELECT string_agg(queue || ' ' || status || ' ' || n, E'\n' ORDER BY queue, status)
      FROM (SELECT queue, status, count(*) AS n FROM dlq.messages GROUP BY 1, 2) x}));
diag("audit events by kind:\n" . $node->safe_psql('postgres', q{
    SELECT string_agg(kind || ' ' || n || ' events, ' || m || ' messages', E'\n' ORDER BY kind)
      FROM (SELECT kind::text, count(*) AS n, sum(message_count) AS m FROM dlq.events GROUP BY 1) x}));
diag("errors trapped in SQL (allowed):\n" . $node->safe_psql('postgres', q{
    SELECT string_agg(op || ' ' || sqlstate || ' x' || n || ': ' || message, E'\n' ORDER BY op, sqlstate)
      FROM (SELECT op, sqlstate, count(*) AS n, min(message) AS message
              FROM soak_trapped GROUP BY 1, 2) x}));
is( $node->safe_psql(
		'postgres', q{
    SELECT string_agg(k, ',' ORDER BY k) FROM unnest(ARRAY['acked', 'nacked', 'replay_requested',
        'discarded', 'resolved', 'retried', 'timed_out', 'expired', 'archived', 'purged',
        'replayed', 'replay_failed', 'redrive_started']) k
     WHERE NOT EXISTS (SELECT 1 FROM dlq.events e WHERE e.kind::text = k)}),
	'', 'the soak exercised acks, nacks, replays, discards, resolves, retries, timeouts, expiry, archive, '
	  . 'purge, handler replays and a redrive task');
# A handler's writes are kept exactly for the calls that resolved their
# message (a failed call's, and a call redone after another message of its
# run failed, are rolled back): one row of soak_handled per message the
# replayed events of soak_h count, however the runs were split, the worker
# retried, the redrive task ticked and the kill cut in.
is( $node->safe_psql('postgres', q{
    SELECT (SELECT coalesce(sum(message_count), 0) FROM dlq.events
             WHERE queue = 'soak_h' AND kind = 'replayed')
           - (SELECT count(*) FROM soak_handled)}),
	'0', 'the handler left one row per message it resolved, no more, no fewer');

# --- every message is accounted for ------------------------------------------------------
# Messages leave dlq.messages only by dlq_discard (event "discarded") and the
# worker's purge ("purged"); both name the ids when they are at most 100,
# which one id per call guarantees for discards.  A purge empties a slot of
# the ring, one event per queue, and may remove more: those are accounted
# for by number below.  Check the naming first, or the accounting would
# prove nothing.
is( $node->safe_psql(
		'postgres', q{
    SELECT count(*) FROM dlq.events
     WHERE kind IN ('discarded', 'purged') AND message_count > 0
       AND (message_ids IS NULL OR cardinality(message_ids) <> message_count)
       AND NOT (kind = 'purged' AND message_ids IS NULL AND message_count > 100)}),
	'0', 'every removal event names the messages it removed, up to 100');
my $stored = $node->safe_psql('postgres', 'SELECT count(DISTINCT id) FROM soak_stored');
cmp_ok($stored, '>', 0, "messages stored: $stored distinct ids");
is( $node->safe_psql(
		'postgres', q{
    WITH removed AS (SELECT DISTINCT unnest(message_ids) AS id FROM dlq.events
                      WHERE kind IN ('discarded', 'purged')),
         unnamed AS (SELECT s.id FROM (SELECT DISTINCT id FROM soak_stored) s
                      WHERE NOT EXISTS (SELECT 1 FROM dlq.messages m WHERE m.message_id = s.id)
                        AND NOT EXISTS (SELECT 1 FROM removed r WHERE r.id = s.id))
    SELECT (SELECT count(*) FROM unnamed)
           - (SELECT coalesce(sum(message_count), 0) FROM dlq.events
               WHERE kind = 'purged' AND message_ids IS NULL)}),
	'0', 'every stored message is present, or was removed by an audited discard or purge naming it, '
	  . 'or is one of the messages counted by a purge too large to name them');
is( $node->safe_psql(
		'postgres', q{
    SELECT coalesce(string_agg(m.message_id::text, ',' ORDER BY m.message_id), '')
      FROM dlq.messages m
     WHERE NOT EXISTS (SELECT 1 FROM soak_stored s WHERE s.id = m.message_id)}),
	'', 'every present message was stored by a committed dlq_store');
is( $node->safe_psql(
		'postgres', q{
    WITH removed AS (SELECT DISTINCT unnest(message_ids) AS id FROM dlq.events
                      WHERE kind IN ('discarded', 'purged'))
    SELECT coalesce(string_agg(m.message_id::text, ',' ORDER BY m.message_id), '')
      FROM dlq.messages m JOIN removed r ON r.id = m.message_id}),
	'', 'no message audited as removed is still there');

# --- dlq.counts equals count(*) -----------------------------------------------------------
is( $node->safe_psql(
		'postgres', q{
    WITH c AS (SELECT queue, status, sum(n) AS n FROM dlq.counts GROUP BY 1, 2 HAVING sum(n) <> 0),
         m AS (SELECT queue, status, count(*) AS n FROM dlq.messages GROUP BY 1, 2)
    SELECT coalesce(string_agg(format('%s/%s: counts %s, messages %s',
                                      coalesce(c.queue, m.queue), coalesce(c.status, m.status),
                                      coalesce(c.n, 0), coalesce(m.n, 0)), '; '), '')
      FROM c FULL JOIN m ON m.queue = c.queue AND m.status = c.status
     WHERE c.n IS DISTINCT FROM m.n}),
	'', 'dlq.counts equals count(*) per queue and status');

# --- states are consistent ------------------------------------------------------------------
is( $node->safe_psql(
		'postgres', q{
    SELECT coalesce(string_agg(message_id || ':' || status, ',' ORDER BY message_id), '')
      FROM dlq.messages
     WHERE (status <> 'replaying' AND (claimed_by IS NOT NULL OR claim_expires_at IS NOT NULL))
        OR (status IN ('resolved', 'expired', 'archived')) <> (resolved_at IS NOT NULL)
        OR (status = 'pending' AND attempts >= max_attempts)
        OR occurrences < 1}),
	'', 'no message holds a claim unless replaying, resolved_at is set exactly on closed ones, '
	  . 'pending ones have attempts left');

# --- no client saw an internal or constraint error -------------------------------------------
# Every ERROR of a soak client that reached the server log (allowed ones are
# caught in SQL and never logged), and every ERROR of the worker.
# The first line of an error's CONTEXT is added to it: it names the statement.
my (%client, %worker, %last);
for my $line (split /\n/, PostgreSQL::Test::Utils::slurp_file($node->logfile))
{
	next unless $line =~ /\[(\d+)\] <([0-9A-Z]{5})> \{([^}]*)\} (?:\(([^)]*)\) )?([A-Z]+):  (.*)$/;
	my ($pid, $code, $btype, $app, $level, $msg) = ($1, $2, $3, $4 // '', $5, $6);
	if ($level eq 'CONTEXT' && $last{$pid})
	{
		${ $last{$pid} } .= ' (context: ' . substr($msg, 0, 200) . ')';
		delete $last{$pid};
		next;
	}
	next if $level =~ /^(DETAIL|HINT)$/;
	delete $last{$pid};
	next unless $level =~ /^(ERROR|FATAL|PANIC)$/;
	my $list;
	if ($app =~ /^soak_/)
	{
		$list = \@{ $client{$code} };
		push @$list, "$app $level: $msg";
	}
	elsif ($btype eq 'dlq worker')
	{
		$list = \@{ $worker{$code} };
		push @$list, "$level: $msg";
	}
	$last{$pid} = \$list->[-1] if $list;
}
sub summary
{
	my ($h, @codes) = @_;
	return join("\n",
		map { sprintf("%s x%d, e.g. %s", $_, scalar @{ $h->{$_} }, $h->{$_}[0]) }
		  grep { exists $h->{$_} } @codes);
}
my @client_codes = sort keys %client;
diag("client errors in the server log:\n" . summary(\%client, @client_codes)) if @client_codes;
my @worker_codes = sort keys %worker;
diag("worker errors in the server log:\n" . summary(\%worker, @worker_codes)) if @worker_codes;

is(summary(\%client, grep { /^(XX|23)/ } @client_codes),
	'', 'no client saw an internal error (XX) or a constraint violation (23)');
# Allowed: deadlocks and serialization failures (40P01, 40001), which are
# transient and which pgbench retries; 08006, "connection to client lost",
# which a backend logs when its client went away (pgbench closes the
# connection of a client it aborts, an abort that is reported above on its
# own) and which no client sees.
is(summary(\%client, grep { !/^(XX|23)/ && !/^(40P01|40001|08006)$/ } @client_codes),
	'', 'no client saw any other error outside the allowed ones');
is(summary(\%worker, grep { /^(XX|23)/ } @worker_codes),
	'', 'the worker saw no internal error (XX) or constraint violation (23)');

$node->stop;
done_testing();
