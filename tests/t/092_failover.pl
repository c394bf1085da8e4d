# Failover: a primary with a synchronous streaming standby, dlq preloaded on
# both.  Under a running mix (stores, captures through COPY, replays, claims,
# acks) the primary is stopped with -m immediate and the standby promoted.
# Every dlq_store and every diverted row whose commit returned to its client
# is on the new primary, nothing is counted twice, the dlq worker starts on
# the promoted server by itself and recovers the replays claimed on the old
# primary once their lease ends, a consumer that listens again is notified
# of the next replay, and the old primary, rewound with pg_rewind and
# rejoined as a standby, runs no worker and answers etl_status as a standby.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $conf = "shared_preload_libraries = 'dlq'\ndlq.naptime = 1s\ndlq.replay_timeout = 5s\nwal_keep_size = 256MB\nwal_log_hints = on\n";
my $primary = PostgreSQL::Test::Cluster->new('fo_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', $conf);
$primary->start;
$primary->safe_psql('postgres', q{
    CREATE EXTENSION dlq;
    SELECT (dlq_configure('fo', require_listener => false)).queue;
    CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL CHECK (v > 0));
    SELECT dlq_attach('t', 'cap');
});
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('fo_standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;
# Synchronous: a commit returns once the standby has flushed it.
$primary->append_conf('postgresql.conf', "synchronous_standby_names = 'fo_standby'");
$primary->reload;
$primary->poll_query_until('postgres',
    q{SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = 'fo_standby'})
  or die 'the standby did not become synchronous';

# The mix: each client is a shell loop of psql calls that writes a line to its
# file only after its commit returned.
my $dir = $PostgreSQL::Test::Utils::tmp_check;
my $psql = sprintf('psql -X -A -t -q -v ON_ERROR_STOP=1 -h %s -p %d -d postgres', $primary->host, $primary->port);
my %loops = (
    store => qq{i=0; while :; do i=\$((i+1));
        id=\$($psql -c "SELECT dlq_store('fo', jsonb_build_object('k', \$i), 'handler failed')") &&
            echo "\$i \$id" >> $dir/fo_stored; done},
    copy => qq{b=0; while :; do b=\$((b+1));
        seq 0 9 | awk -v b=\$b '{ print b * 10 + \$1 "," ((\$1 == 3 || \$1 == 7) ? -1 : 1) }' |
            $psql -c "COPY t FROM STDIN (FORMAT csv)" && echo \$b >> $dir/fo_copied; done},
    replay => qq{while :; do $psql -c "SELECT dlq_reprocess_all('fo', max_messages => 20)" >/dev/null; sleep 0.05; done},
    ack => qq{while :; do $psql -c "SELECT dlq_ack(ids) FROM (SELECT array(SELECT message_id FROM dlq_claim('fo', 10, '2 s')) ids) c WHERE ids <> '{}'" >/dev/null; done},
    # A consumer that claims and never acks, as if it died with the primary.
    claim => qq{while :; do $psql -c "SELECT count(*) FROM dlq_claim('fo', 3, '4 s')" >/dev/null; sleep 0.2; done},
);
my %runs;
$runs{$_} = IPC::Run::start([ 'bash', '-c', $loops{$_} ], '>', '/dev/null', '2>', "$dir/fo_$_.err")
  for sort keys %loops;

$primary->poll_query_until('postgres', q{
    SELECT (SELECT count(*) FROM dlq.messages WHERE queue = 'fo' AND status = 'resolved') >= 20
       AND (SELECT count(*) FROM dlq.messages WHERE queue = 'cap') >= 20})
  or die 'the mix did not get going';
$primary->poll_query_until('postgres',
    q{SELECT count(*) > 0 FROM dlq.messages WHERE status = 'replaying' AND claim_expires_at > now()})
  or die 'no claims held';
$primary->stop('immediate');
$_->kill_kill for values %runs;

my $promoted_at = time;
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'promotion failed';

sub lines
{
    my $f = shift;
    return () unless -e $f;
    open(my $fh, '<', $f) or die "$f: $!";
    chomp(my @l = <$fh>);
    return @l;
}

# Every store whose commit returned is there, with its payload.
my @stored = lines("$dir/fo_stored");
cmp_ok(scalar(@stored), '>', 20, scalar(@stored) . ' stores returned to their client before the failure');
my $values = join(',', map { my ($k, $id) = split / /; "($id, $k)" } @stored);
is($standby->safe_psql('postgres', qq{
    SELECT count(*) FROM (VALUES $values) s(id, k)
     WHERE NOT EXISTS (SELECT FROM dlq.messages m WHERE m.message_id = s.id AND m.payload->>'k' = s.k::text)}),
   '0', 'every returned dlq_store is on the new primary');

# Every COPY that returned: its 8 good rows in t, its 2 bad rows in the DLQ.
my @copied = lines("$dir/fo_copied");
cmp_ok(scalar(@copied), '>', 5, scalar(@copied) . ' COPY loads returned before the failure');
my $batches = join(',', @copied);
is($standby->safe_psql('postgres', qq{
    SELECT count(*) FROM unnest(ARRAY[$batches]::bigint[]) b
     WHERE (SELECT count(*) FROM t WHERE id / 10 = b) <> 8
        OR (SELECT count(*) FROM dlq.messages m WHERE m.queue = 'cap' AND (m.payload->>'id')::bigint / 10 = b) <> 2}),
   '0', 'every returned COPY has its good rows in the table and its bad rows in the DLQ');
is($standby->safe_psql('postgres', q{
    SELECT count(*) FROM (SELECT payload->>'id' FROM dlq.messages WHERE queue = 'cap' GROUP BY 1 HAVING count(*) > 1) d}),
   '0', 'no diverted row is kept twice');

my $counts_exact = q{
    SELECT count(*) FROM (SELECT queue, status, count(*) AS n FROM dlq.messages GROUP BY 1, 2) m
    FULL JOIN (SELECT queue, status, sum(n) AS n FROM dlq.counts GROUP BY 1, 2 HAVING sum(n) <> 0) c
    USING (queue, status) WHERE m.n IS DISTINCT FROM c.n};
is($standby->safe_psql('postgres', $counts_exact), '0', 'dlq.counts equals the real counts on the new primary');

# The worker starts on the promoted server, without a restart.
ok($standby->poll_query_until('postgres', q{SELECT state = 'running' FROM dlq.etl_worker_state()}),
   'the dlq worker runs on the promoted server');
cmp_ok(time - $promoted_at, '<=', 15, '... within a few naptimes of the promotion (' . (time - $promoted_at) . ' s)');
ok($standby->poll_query_until('postgres', q{SELECT count(*) = 0 FROM dlq.messages WHERE status = 'replaying'}),
   'it returns the replays claimed or handed out on the old primary once their lease or timeout ends');
cmp_ok($standby->safe_psql('postgres', q{SELECT count(*) FROM dlq.events WHERE kind = 'timed_out'}), '>', 0,
   '... audited as timed_out');

# A consumer reconnects to the new primary, listens again, and is notified.
my $consumer = $standby->background_psql('postgres');
is($consumer->query_safe(q{SELECT dlq_listen('fo')}), 'dlq_fo', 'a consumer listens again on the new primary');
my $request = $standby->safe_psql('postgres', q{SELECT dlq_reprocess_all('fo', max_messages => 10)->>'request_id'});
my $received = '';
for (my $i = 0; $i < 100 && $received !~ /Asynchronous notification/; $i++)
{
    $received .= $consumer->query_safe('SELECT 1');
    select(undef, undef, undef, 0.05) if $received !~ /Asynchronous notification/;
}
like($received, qr/Asynchronous notification "dlq_fo" with payload ".*"request_id": "$request"/,
     '... and gets the notification of the next dlq_reprocess_all');
$consumer->quit;

# The old primary rejoins as a standby of the new one, rewound with pg_rewind.
$standby->safe_psql('postgres', 'CHECKPOINT');
# pg_rewind copies the source's configuration files: keep the old primary's own.
my $old_conf = slurp_file($primary->data_dir . '/postgresql.conf');
command_ok([ 'pg_rewind', '--target-pgdata=' . $primary->data_dir,
             '--source-server=' . $standby->connstr('postgres') ],
           'pg_rewind rewinds the old primary');
open(my $cf, '>', $primary->data_dir . '/postgresql.conf') or die;
print $cf $old_conf;
close($cf);
$primary->adjust_conf('postgresql.conf', 'synchronous_standby_names', "''");
$primary->enable_streaming($standby);
$primary->start;
$standby->safe_psql('postgres', q{SELECT dlq_store('fo', '{"after": "rejoin"}', 'late')});
$standby->wait_for_catchup($primary);
is($primary->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the old primary is a standby now');
is($primary->safe_psql('postgres', q{SELECT count(*) FROM dlq.messages WHERE payload->>'after' = 'rejoin'}), '1',
   '... streaming from the new primary');
is($primary->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dlq worker'}), '0',
   '... running no dlq worker');
is($primary->safe_psql('postgres', q{SELECT etl_status_json()->'worker'->>'state'}), 'standby',
   '... and answering etl_status as a standby');
is($primary->safe_psql('postgres', $counts_exact), '0', '... with exact counts');

$primary->stop;
$standby->stop;
done_testing();
