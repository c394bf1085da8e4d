# The consumer in application code (contrib/consumer/dlq_consumer.py, Python
# with psycopg2) against a real cluster: messages replayed while it runs are
# all acked, each exactly once, even though its connection is killed midway
# (pg_terminate_backend) and the server restarts under it; it reconnects and
# listens again by itself, and stops cleanly on SIGTERM.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use File::Basename qw(dirname);
use Cwd qw(abs_path);

my $python = '/usr/bin/python3';
if (system("$python -c 'import psycopg2' >/dev/null 2>&1") != 0)
{
    plan skip_all => 'python3-psycopg2 is not installed (.ci/run installs it)';
}
my $script = abs_path(dirname(__FILE__) . '/../../contrib/consumer/dlq_consumer.py');

my $node = PostgreSQL::Test::Cluster->new('consumer_client');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dlq'\ndlq.naptime = 1s");
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION dlq;
    SELECT count(dlq_store('app', jsonb_build_object('n', g), 'handler failed')) FROM generate_series(1, 300) g;
});

# The application's handler: 20 ms per message, so that the connection is
# killed and the server restarted while a claimed batch is in hand; message 7
# fails its first attempt (a nack) and succeeds when replayed again.
my $handler_dir = "$PostgreSQL::Test::Utils::tmp_check/handler";
mkdir $handler_dir;
open(my $hf, '>', "$handler_dir/tap_handler.py") or die;
print $hf <<'PY';
import json, time

def handle(payload, message):
    time.sleep(0.02)
    if payload["n"] == 7 and message["attempts"] == 1:
        raise ValueError("not yet")
    print(json.dumps({"message_id": message["message_id"]}), flush=True)
PY
close($hf);

my $out_file = "$PostgreSQL::Test::Utils::tmp_check/consumer.out";
my $err_file = "$PostgreSQL::Test::Utils::tmp_check/consumer.err";
my %env = (%ENV, PGHOST => $node->host, PGPORT => $node->port, PGDATABASE => 'postgres',
           DLQ_QUEUE => 'app', DLQ_BATCH_SIZE => '20', DLQ_VISIBILITY => '2 s',
           DLQ_POLL_SECONDS => '1', DLQ_RECONNECT_MAX => '1',
           DLQ_HANDLER => 'tap_handler:handle', PYTHONPATH => $handler_dir);
my $consumer;
{
    local %ENV = %env;
    $consumer = IPC::Run::start([ $python, $script ], '>', $out_file, '2>', $err_file,
                               IPC::Run::timeout(300));
}

my $registered = q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'dlq_consumer'
                      AND query LIKE '%dlq_%'};
sub consumer_pid
{
    return $node->safe_psql('postgres',
        q{SELECT pid FROM pg_stat_activity WHERE application_name = 'dlq_consumer'});
}
sub acked
{
    return $node->safe_psql('postgres', q{SELECT count(*) FROM dlq.messages WHERE status = 'resolved'});
}

ok($node->poll_query_until('postgres', $registered), 'the consumer connects and listens');
my $r = $node->safe_psql('postgres', q{SELECT dlq_reprocess_all('app', max_messages => 100)->>'notified'});
is($r, '100', 'a first replay of 100 is handed to it');
ok($node->poll_query_until('postgres', q{SELECT count(*) >= 30 FROM dlq.messages WHERE status = 'resolved'}),
   '... and it acks them');

# Kill its connection in the middle of the work.
my $pid = consumer_pid();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok($node->poll_query_until('postgres',
        qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'dlq_consumer' AND pid <> $pid}),
   'after pg_terminate_backend it reconnects');
ok($node->poll_query_until('postgres', $registered), '... and listens again');
$r = $node->safe_psql('postgres', q{SELECT dlq_reprocess_all('app', max_messages => 100)->>'notified'});
is($r, '100', 'a second replay of 100 is handed to it');

# Restart the server under it while it works.
ok($node->poll_query_until('postgres', q{SELECT count(*) >= 130 FROM dlq.messages WHERE status = 'resolved'}),
   'it acks messages of the second replay');
$node->restart;
ok($node->poll_query_until('postgres', $registered), 'after a server restart it reconnects and listens again');
$r = $node->safe_psql('postgres', q{SELECT dlq_reprocess_all('app')->>'notified'});
cmp_ok($r, '>=', 80, 'a third replay hands it the rest');
is($node->safe_psql('postgres', q{
    SELECT count(*) FROM dlq.events e, dlq.messages m
     WHERE e.kind = 'nacked' AND m.message_id = ANY (e.message_ids) AND m.payload->>'n' = '7'}),
   '1', 'the message its handler failed was nacked once');

ok($node->poll_query_until('postgres', q{SELECT count(*) = 300 FROM dlq.messages WHERE status = 'resolved'}),
   'every message is acked in the end');
is($node->safe_psql('postgres', q{
    SELECT count(*) FROM (SELECT id FROM dlq.events, unnest(message_ids) id
                           WHERE kind = 'acked' GROUP BY id HAVING count(*) <> 1) twice}),
   '0', 'no message is acked twice');
is($node->safe_psql('postgres', q{
    SELECT count(DISTINCT id) FROM dlq.events, unnest(message_ids) id WHERE kind = 'acked'}),
   '300', 'each of the 300 is acked once');
is($node->safe_psql('postgres', q{
    SELECT count(*) FROM dlq.counts c GROUP BY () HAVING sum(n) <> (SELECT count(*) FROM dlq.messages)}),
   '', 'dlq.counts equals count(*)');

my %seen;
open(my $fh, '<', $out_file) or die "cannot read $out_file: $!";
while (<$fh>)
{
    $seen{$1}++ if /"message_id": (\d+)/;
}
close($fh);
is(scalar(keys %seen), 300, 'the handler saw all 300 messages (at least once each)');
note('messages handled more than once (lease ran out before the ack): '
     . scalar(grep { $seen{$_} > 1 } keys %seen));

# SIGTERM: it finishes the batch in hand and exits 0.
$consumer->signal('TERM');
my $finished = eval { $consumer->finish; 1 };
ok($finished && $consumer->result == 0, 'SIGTERM stops it with exit status 0');
like(slurp_file($err_file), qr/dlq_consumer INFO stopped/, '... saying it stopped');
like(slurp_file($err_file), qr/connection lost .* reconnecting/, 'it logged the lost connections');

$node->stop;
done_testing();
