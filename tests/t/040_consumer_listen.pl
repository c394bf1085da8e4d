# The consumer side of replay with real LISTEN clients: a registered
# consumer receives exactly one notification for a 10k-message
# dlq_reprocess_all, claims everything, acks half and nacks the rest, and the
# final states and attempt counts are exact.  A consumer that dies holding
# claims loses nothing: its registration vanishes with its backend, and its
# claims expire and are claimed again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('consumer');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dlq'");
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION dlq;
    SELECT count(dlq_store('tap_q', jsonb_build_object('n', g), 'failed ' || g))
      FROM generate_series(1, 10000) g;
});

# Without a live consumer the replay is refused and nothing changes.
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT dlq_reprocess_all('tap_q')});
isnt($ret, 0, 'replay without a consumer fails');
like($err, qr/no consumer is listening on queue "tap_q"/, '... saying so');
like($err, qr/HINT:  Start a consumer that calls dlq_listen/, '... with a hint');
is($node->safe_psql('postgres', q{SELECT count(*) FROM dlq.messages WHERE status = 'pending'}),
   '10000', '... and every message is still pending');

# A consumer registers: LISTEN plus a registration visible in pg_locks.
my $consumer = $node->background_psql('postgres');
is($consumer->query_safe(q{SELECT dlq_listen('tap_q')}), 'dlq_tap_q', 'dlq_listen returns the channel');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted}),
   '1', 'the consumer holds its registration lock');

my $summary = $node->safe_psql('postgres',
    q{SELECT r->>'replayed', r->>'notified', r->>'notifications', r->>'request_id' FROM dlq_reprocess_all('tap_q') r});
my ($replayed, $notified, $notifications, $request_id) = split /\|/, $summary;
is($replayed, '10000', '10000 messages replayed');
is($notified, '10000', '... all handed to consumers');
is($notifications, '1', '... with one notification');

# Collect what the consumer received: poll until the notification arrives,
# then a few more round trips to be sure no second one follows.
my $received = '';
for (my $i = 0; $i < 100 && $received !~ /Asynchronous notification/; $i++)
{
    $received .= $consumer->query_safe('SELECT 1');
    usleep(50_000) if $received !~ /Asynchronous notification/;
}
$received .= $consumer->query_safe('SELECT 1') for 1 .. 3;
my @notes = ($received =~ /Asynchronous notification "([^"]+)" with payload "(.*?)" received/g);
is(scalar(@notes), 2, 'exactly one notification received');
is($notes[0], 'dlq_tap_q', '... on the queue channel');
like($notes[1], qr/^\{"queue": "tap_q", "request_id": "$request_id", "count": 10000\}$/,
     '... with queue, request id and count');

# Claim everything in batches: 10000 distinct messages, no attempts added.
my %claimed;
for (;;)
{
    my $batch = $consumer->query_safe(q{SELECT message_id FROM dlq_claim('tap_q', 1000, '10 min')});
    last if $batch eq '';
    $claimed{$_}++ for split /\n/, $batch;
}
is(scalar(keys %claimed), 10000, 'the consumer claimed 10000 messages');
is((grep { $_ != 1 } values %claimed), 0, '... each once');

# Ack half, nack the rest.
my @ids = sort { $a <=> $b } keys %claimed;
my @ack = @ids[ grep { $_ % 2 == 0 } 0 .. $#ids ];
my @nack = @ids[ grep { $_ % 2 == 1 } 0 .. $#ids ];
is($consumer->query_safe('SELECT dlq_ack(ARRAY[' . join(',', @ack) . '])'), '5000', 'acked 5000');
is($consumer->query_safe(
    'SELECT count(*) FROM unnest(ARRAY[' . join(',', @nack) . q{]) i WHERE dlq_nack(i, 'consumer failed', '40001') = 'pending'}),
   '5000', 'nacked 5000, all back to pending');
is($node->safe_psql('postgres',
    q{SELECT string_agg(format('%s:%s:%s', status, attempts, n), ' ' ORDER BY status)
        FROM (SELECT status, attempts, count(*) AS n FROM dlq.messages GROUP BY 1, 2) s}),
   'pending:1:5000 resolved:1:5000', 'final states and attempts are exact');
is($node->safe_psql('postgres',
    q{SELECT count(*) FROM dlq.messages WHERE status = 'pending'
        AND (error <> 'consumer failed' OR sqlstate <> '40001' OR claimed_by IS NOT NULL)}),
   '0', 'nacked messages carry the consumer error and no claim');
is($node->safe_psql('postgres',
    q{SELECT string_agg(kind || ':' || message_count, ' ' ORDER BY kind::text) FROM
        (SELECT kind, sum(message_count) AS message_count FROM dlq.events WHERE kind <> 'alert' GROUP BY 1) e}),
   'acked:5000 nacked:5000 replay_requested:10000', 'audit trail counts every action');

# A consumer dies holding claims.
$node->safe_psql('postgres', q{
    SELECT count(dlq_store('tap_dead', jsonb_build_object('n', g), 'e')) FROM generate_series(1, 300) g;
});
my $doomed = $node->background_psql('postgres');
$doomed->query_safe(q{SELECT dlq_listen('tap_dead')});
my $pid = $doomed->query_safe('SELECT pg_backend_pid()');
is($node->safe_psql('postgres', q{SELECT dlq_reprocess_all('tap_dead')->>'replayed'}), '300',
   'replayed to the doomed consumer');
like($doomed->query_safe(q{SELECT count(*) FROM dlq_claim('tap_dead', 100, '2 s')}), qr/^100$/m,
   'the doomed consumer claims 100');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$node->poll_query_until('postgres', "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $pid)")
  or die 'backend did not exit';
eval { $doomed->quit; };

# Its registration vanished with it: a new failure cannot be replayed.
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted}),
   '1', 'only the first consumer is still registered');
$node->safe_psql('postgres', q{SELECT dlq_store('tap_dead', '{"n": 301}', 'e')});
($ret, $out, $err) = $node->psql('postgres', q{SELECT dlq_reprocess_all('tap_dead')});
like($err, qr/no consumer is listening on queue "tap_dead"/, 'the dead consumer is no longer registered');

# Nothing is lost: the 300 messages are still replaying, and once the
# lease runs out another consumer gets exactly the dead one's 100 again.
is($node->safe_psql('postgres', q{SELECT count(*) FROM dlq.messages WHERE queue = 'tap_dead' AND status = 'replaying'}),
   '300', 'all 300 still replaying');
my $rescuer = $node->background_psql('postgres');
$rescuer->query_safe(q{SELECT dlq_listen('tap_dead')});
my %rescued;
my $first = $rescuer->query_safe(q{SELECT message_id FROM dlq_claim('tap_dead', 1000)});
$rescued{$_}++ for grep { /^\d+$/ } split /\n/, $first;
cmp_ok(scalar(keys %rescued), '>=', 200, 'the rescuer gets at least the 200 unclaimed ones at once');
for (my $i = 0; $i < 600 && keys %rescued < 300; $i++)
{
    usleep(100_000);
    $rescued{$_}++ for grep { /^\d+$/ } split /\n/,
      $rescuer->query_safe(q{SELECT message_id FROM dlq_claim('tap_dead', 1000)});
}
is(scalar(keys %rescued), 300, 'once the dead consumer\'s leases expire it gets those 100 too');
is((grep { $_ != 1 } values %rescued), 0, '... each message once');
is($node->safe_psql('postgres',
    q{SELECT max(attempts) FROM dlq.messages WHERE queue = 'tap_dead' AND status = 'replaying'}),
   '1', '... with no attempt added by the re-claim');
is($rescuer->query_safe(
    q{SELECT dlq_ack(array_agg(message_id)) FROM dlq.messages WHERE queue = 'tap_dead'}), '300',
   'and acks all 300');

$consumer->quit;
$rescuer->quit;
$node->stop;
done_testing();
