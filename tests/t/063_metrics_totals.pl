# Cumulative per-queue totals (dlq.metrics dlq_messages_*_total): they move
# with stores (dedup folds included), replays (handed to a consumer or
# re-applied to a table), failed replays, resolves, discards and expiry;
# aborted work adds nothing; purges and TRUNCATE are not discards; the totals
# survive dlq.recount(), TRUNCATE and a restart.  Alerts carry alert_id, at
# and message on dlq_alerts and are written to the server log.  When
# prometheus-postgres-exporter is installed, the totals are counters in its
# exposition and grow between two scrapes.  Every wait polls.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use File::Basename;
use Cwd 'abs_path';

my $node = PostgreSQL::Test::Cluster->new('totals');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
dlq.naptime = 100ms
dlq.replay_timeout = 1h
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dlq');

# The totals of a queue as "stored replayed replay_failed resolved discarded expired".
sub totals
{
	my ($queue, $db) = @_;
	return $node->safe_psql($db // 'postgres', qq{
        SELECT string_agg(coalesce((SELECT value FROM dlq.metrics
                                     WHERE metric = 'dlq_messages_' || w || '_total' AND queue = '$queue'), -1)::text,
                          ' ' ORDER BY o)
          FROM unnest(ARRAY['stored', 'replayed', 'replay_failed', 'resolved', 'discarded', 'expired'])
               WITH ORDINALITY AS x(w, o)});
}

# dlq.counts agrees with the messages (the counts side of the trigger).
sub counts_right
{
	return $node->safe_psql('postgres', q{
        SELECT count(*) FROM (SELECT queue, status, count(*) n FROM dlq.messages GROUP BY 1, 2) m
          FULL JOIN (SELECT queue, status, sum(n) n FROM dlq.counts GROUP BY 1, 2 HAVING sum(n) <> 0) c
               USING (queue, status)
         WHERE m.n IS DISTINCT FROM c.n});
}

# --- a queue without messages shows zeros ------------------------------------
$node->safe_psql('postgres', q{SELECT dlq_configure('mt_idle', max_attempts => 3)});
is(totals('mt_idle'), '0 0 0 0 0 0', 'a queue with no messages has every total at 0');

# --- stores and dedup folds ----------------------------------------------------
$node->safe_psql('postgres', q{
    SELECT dlq_configure('mt_a', require_listener => false, max_attempts => 5);
    SELECT dlq_store('mt_a', jsonb_build_object('i', i), 'boom') FROM generate_series(1, 10) i;
    SELECT dlq_store('mt_a', '{"k": 1}', 'boom', dedup_key => 'k1');
    SELECT dlq_store('mt_a', '{"k": 1}', 'boom again', dedup_key => 'k1');
    SELECT dlq_store('mt_a', '{"k": 1}', 'boom again', dedup_key => 'k1');
});
is(totals('mt_a'), '13 0 0 0 0 0', 'stored counts every store: 10 new, 1 keyed and 2 folds into it');
is($node->safe_psql('postgres', q{SELECT occurrences FROM dlq.messages WHERE dedup_key = 'k1'}), '3',
	'... the folds are the keyed message\'s occurrences');

# aborted work adds nothing, a committed subtransaction does
$node->safe_psql('postgres', q{
    BEGIN;
    SELECT dlq_store('mt_a', '{"gone": 1}', 'boom');
    ROLLBACK;
    BEGIN;
    SAVEPOINT s1;
    SELECT dlq_store('mt_a', '{"gone": 2}', 'boom');
    ROLLBACK TO SAVEPOINT s1;
    SAVEPOINT s2;
    SELECT dlq_store('mt_a', '{"kept": 1}', 'boom');
    RELEASE SAVEPOINT s2;
    COMMIT;
});
is(totals('mt_a'), '14 0 0 0 0 0', 'a rolled-back store and an aborted subtransaction add nothing');

# --- hand-off replays: ack, nack, resolve, discard, expiry ---------------------
my $ids = $node->safe_psql('postgres', q{
    SELECT string_agg(message_id::text, ',' ORDER BY message_id) FROM dlq.messages
     WHERE queue = 'mt_a' AND payload ? 'i'});
my @id = split /,/, $ids;
$node->safe_psql('postgres', qq{
    SELECT dlq_reprocess(ARRAY[$id[0], $id[1], $id[2], $id[3]]);
    SELECT dlq_ack(ARRAY[$id[0], $id[1]]);
    SELECT dlq_nack($id[2], 'still broken');
    SELECT dlq_resolve(ARRAY[$id[4], $id[5]]);
    SELECT dlq_discard(ARRAY[$id[6]]);
});
is(totals('mt_a'), '14 2 1 2 1 0',
	'ack: replayed 2; nack: replay_failed 1; dlq_resolve: resolved 2; dlq_discard: discarded 1');

# dlq_resolve of a message a consumer is replaying: the message's resolution
# (set by dlq_resolve, never by dlq_ack) tells it from an ack; before that
# column exists it counts as replayed.
my $has_resolution = $node->safe_psql('postgres', q{
    SELECT count(*) FROM pg_attribute WHERE attrelid = 'dlq.messages'::regclass
       AND attname = 'resolution' AND NOT attisdropped});
$node->safe_psql('postgres', qq{SELECT dlq_resolve(ARRAY[$id[3]])});
is(totals('mt_a'), $has_resolution ? '14 2 1 3 1 0' : '14 3 1 2 1 0',
	$has_resolution ? 'dlq_resolve of a replaying message is resolved'
	  : 'dlq_resolve of a replaying message counts as replayed (no resolution column)');
my $r = $has_resolution ? '2 1 3' : '3 1 2';

$node->safe_psql('postgres', qq{
    UPDATE dlq.messages SET expires_at = now() - interval '1 second' WHERE message_id IN ($id[7], $id[8])});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 2 FROM dlq.messages WHERE queue = 'mt_a' AND status = 'expired'}),
	'the worker expires two messages');
is(totals('mt_a'), "14 $r 1 2", 'expired 2');

# a closed message deleted is a purge, not a discard
$node->safe_psql('postgres', qq{DELETE FROM dlq.messages WHERE message_id IN ($id[0], $id[7])});
is(totals('mt_a'), "14 $r 1 2", 'deleting closed messages (a purge) is no discard');

# --- replays re-applied to a table --------------------------------------------
$node->safe_psql('postgres', q{
    CREATE TABLE mt_target (id int PRIMARY KEY, v int CONSTRAINT mt_positive CHECK (v > 0));
    SELECT dlq_attach('mt_target', 'mt_tab');
    INSERT INTO mt_target VALUES (1, 1), (2, -1), (3, -2), (4, -3);
    SELECT dlq_reprocess(ARRAY(SELECT message_id FROM dlq.messages WHERE queue = 'mt_tab'));
    ALTER TABLE mt_target DROP CONSTRAINT mt_positive;
    SELECT dlq_reprocess(ARRAY(SELECT message_id FROM dlq.messages WHERE queue = 'mt_tab'
                                ORDER BY message_id LIMIT 2));
    SELECT dlq_resolve(ARRAY(SELECT message_id FROM dlq.messages WHERE queue = 'mt_tab' AND status = 'pending'));
});
is(totals('mt_tab'), '3 2 3 1 0 0',
	'captured rows: stored 3; a failed re-apply is replay_failed (3), a re-apply replayed (2), dlq_resolve resolved (1)');
is(counts_right(), '0', 'dlq.counts still equals count(*) per queue and state');

# --- writers in several backends, one queue ------------------------------------
my @bg;
for my $n (1 .. 3)
{
	my $s = $node->background_psql('postgres');
	$s->query_safe(q{SELECT dlq_store('mt_b', '{}', 'boom') FROM generate_series(1, 5)});
	push @bg, $s;
}
$_->query_safe(q{SELECT dlq_store('mt_b', '{}', 'boom')}) foreach @bg;
$_->quit foreach @bg;
is(totals('mt_b'), '18 0 0 0 0 0', 'stores from three backends (three shards) add up');
ok($node->safe_psql('postgres', q{SELECT count(DISTINCT shard) FROM dlq.counts WHERE queue = 'mt_b'}) >= 2,
	'... kept in more than one shard row');

# --- survive recount, TRUNCATE and a restart -----------------------------------
my $before = join('|', map { totals($_) } qw(mt_a mt_tab mt_b));
$node->safe_psql('postgres', 'SELECT dlq.recount()');
is(join('|', map { totals($_) } qw(mt_a mt_tab mt_b)), $before, 'dlq.recount() keeps the totals');
is(counts_right(), '0', '... and rebuilds the counts');

$node->restart;
is(join('|', map { totals($_) } qw(mt_a mt_tab mt_b)), $before, 'the totals survive a restart');

$node->safe_psql('postgres', 'TRUNCATE dlq.messages');
is(join('|', map { totals($_) } qw(mt_a mt_tab mt_b)), $before, 'TRUNCATE dlq.messages (a purge) keeps the totals');
is($node->safe_psql('postgres', q{SELECT coalesce(sum(n), 0) FROM dlq.counts}), '0', '... and zeroes the counts');
$node->safe_psql('postgres', q{SELECT dlq_store('mt_b', '{}', 'boom')});
is(totals('mt_b'), '19 0 0 0 0 0', 'and they go on from there');

# pg_dump keeps them (dlq.counts is in the dump's data)
my $dump = $node->basedir . '/totals.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE mt_restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('mt_restored'), $dump ], 'pg_restore');
is(join('|', map { totals($_, 'mt_restored') } qw(mt_a mt_tab mt_b)),
	join('|', map { totals($_) } qw(mt_a mt_tab mt_b)), 'a dump and restore keeps the totals');
$node->safe_psql('mt_restored', q{SELECT dlq_store('mt_b', '{}', 'boom')});
is(totals('mt_b', 'mt_restored'), '20 0 0 0 0 0', '... and they go on from there');

# etl_status_json carries them per queue
is($node->safe_psql('postgres', q{
    SELECT q -> 'totals' FROM jsonb_array_elements(etl_status_json() -> 'queues') q WHERE q ->> 'name' = 'mt_tab'}),
	'{"stored": 3, "expired": 0, "replayed": 2, "resolved": 1, "discarded": 0, "replay_failed": 3}',
	'etl_status_json() has each queue\'s totals');

# readers see them through dlq.metrics only
$node->safe_psql('postgres', q{CREATE ROLE mt_reader LOGIN IN ROLE dlq_reader});
is($node->safe_psql('postgres', q{
    SET ROLE mt_reader;
    SELECT value FROM dlq.metrics WHERE metric = 'dlq_messages_stored_total' AND queue = 'mt_b'}),
	'19', 'a dlq_reader reads the totals in dlq.metrics');
my ($ret, $out, $err) = $node->psql('postgres', q{SET ROLE mt_reader; SELECT * FROM dlq.counts});
like($err, qr/permission denied/, '... but not dlq.counts itself');

# --- alerts: id, time, message; NOTIFY and the server log ------------------------
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN dlq_alerts');
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{
    SELECT dlq_store('mt_alert', jsonb_build_object('i', i), 'boom') FROM generate_series(1, 6) i;
    UPDATE dlq.queues SET alert_threshold = 5, alert_cooldown = '1 hour' WHERE queue = 'mt_alert';
});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 1 FROM dlq.events WHERE kind = 'alert' AND queue = 'mt_alert'}),
	'the alert is an event of kind alert');
my $event = $node->safe_psql('postgres', q{
    SELECT event_id || '|' || to_jsonb(at)::text || '|' || (detail ->> 'message')
      FROM dlq.events WHERE kind = 'alert' AND queue = 'mt_alert'});
my ($alert_id, $at, $message) = split /\|/, $event, 3;
like($message, qr/^queue "mt_alert" has 6 pending or replaying messages \(threshold 5\), oldest \d+ s$/,
	'the message is a sentence with the queue, the depth, the threshold and the oldest age');
my $notes = $listener->query_safe('SELECT 1');
like($notes, qr/Asynchronous notification "dlq_alerts"/, 'LISTEN dlq_alerts gets the alert');
my ($payload) = ($notes =~ /Asynchronous notification "dlq_alerts" with payload "(\{[^\n]*"queue": "mt_alert"[^\n]*\})"/);
$payload //= '';
like($payload, qr/"alert_id": $alert_id\b/, 'the payload carries alert_id, the event_id of the alert event');
like($payload, qr/"at": \Q$at\E/, '... at, the time of the event');
like($payload, qr/"message": "queue \\"mt_alert\\" has 6 pending or replaying messages \(threshold 5\), oldest \d+ s"/,
	'... and message');
like($payload, qr/"depth": 6, "queue": "mt_alert", .*"severity": "warning", "threshold": 5, "oldest_age_seconds": \d+/,
	'... next to depth, queue, severity, threshold and oldest_age_seconds as before');
$listener->quit;
ok($node->wait_for_log(qr/LOG:  queue "mt_alert" has 6 pending or replaying messages \(threshold 5\), oldest \d+ s\n[^\n]*DETAIL:  Severity warning, alert_id $alert_id /,
		$log_offset), 'the worker writes the alert to the server log at level LOG');
ok(!$node->log_contains(qr/WARNING:  queue "mt_alert"/, $log_offset), '... not as a WARNING');

# --- the real exporter: the totals are counters and grow ----------------------
my $exporter = '/usr/bin/prometheus-postgres-exporter';
SKIP:
{
	skip "$exporter is not installed", 6 unless -x $exporter;

	my $queries = abs_path(dirname(__FILE__) . '/../../contrib/prometheus/dlq_queries.yaml');
	$node->safe_psql('postgres', q{
        CREATE ROLE mt_exporter LOGIN IN ROLE dlq_reader, pg_monitor;
        ALTER ROLE mt_exporter SET dlq.status_worker = 'stopped';
    });
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $dsn = sprintf('postgresql://mt_exporter@:%d/postgres?host=%s&sslmode=disable', $node->port, $node->host);
	my $log = $node->basedir . '/exporter.log';
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', $log);
		open(STDERR, '>&', \*STDOUT);
		$ENV{DATA_SOURCE_NAME} = $dsn;
		exec($exporter, "--web.listen-address=127.0.0.1:$port", "--extend.query-path=$queries",
			'--no-collector.database');
		exit 1;
	}
	my $http = HTTP::Tiny->new(timeout => 10);
	my $scrape = sub {
		for (1 .. 100)
		{
			my $res = $http->get("http://127.0.0.1:$port/metrics");
			return $res->{content}
			  if $res->{success} && $res->{content} =~ /^dlq_messages_stored_total/m;
			select(undef, undef, undef, 0.2);
		}
		return '';
	};
	my $value = sub {
		my ($body, $name, $queue) = @_;
		return ($body =~ /^\Q$name\E\{[^}]*queue="\Q$queue\E"[^}]*\} (\S+)$/m) ? $1 : undef;
	};
	my $first = $scrape->();
	$node->safe_psql('postgres', q{SELECT dlq_store('mt_b', '{}', 'boom') FROM generate_series(1, 7)});
	my $second = $scrape->();
	kill 'TERM', $pid;
	waitpid($pid, 0);
	note(slurp_file($log)) if $second eq '';

	like($second, qr/^# TYPE dlq_messages_stored_total counter$/m, 'dlq_messages_stored_total is a counter');
	my @types = ($second =~ /^# TYPE (dlq_messages_\w+_total) counter$/mg);
	is(join(' ', sort @types),
		join(' ', sort map { "dlq_messages_${_}_total" } qw(stored replayed replay_failed resolved discarded expired)),
		'all six totals are counters');
	like($second, qr/^# TYPE dlq_messages gauge$/m, 'dlq_messages stays a gauge');
	is($value->($first, 'dlq_messages_stored_total', 'mt_b'), '19', 'first scrape: stored 19');
	is($value->($second, 'dlq_messages_stored_total', 'mt_b'), '26', 'second scrape, after 7 stores: 26');
	is($value->($second, 'dlq_messages_replayed_total', 'mt_a'), (split ' ', $r)[0], 'replayed of another queue');
}

$node->stop;
done_testing();
