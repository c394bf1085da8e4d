# etl_status is read-only: a streaming hot standby answers it, with the same
# counts as the primary, and reports the worker it cannot see as "standby"
# (not as down, so a standby alone never turns a queue to "error").
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'dlq'");
$primary->start;
$primary->safe_psql('postgres', q{
    CREATE EXTENSION dlq;
    SELECT count(dlq_store('sb_' || (i % 3), jsonb_build_object('i', i), 'boom')) FROM generate_series(1, 300) i;
    UPDATE dlq.messages SET status = 'review' WHERE queue = 'sb_0' AND message_id % 2 = 0;
    CREATE TABLE src (id bigint PRIMARY KEY);
    INSERT INTO src SELECT generate_series(1, 1000);
    SELECT etl_register_stage('sb_stage', 'src', 'id');
    SELECT etl_watermark('sb_stage', 400);
});

$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;

# Changes after the backup arrive by streaming.
$primary->safe_psql('postgres', q{
    SELECT count(dlq_store('sb_new', '{}', 'after backup')) FROM generate_series(1, 7);
    DELETE FROM dlq.messages WHERE queue = 'sb_1' AND message_id % 5 = 0;
    SELECT etl_watermark('sb_stage', 900);
});
$primary->wait_for_catchup($standby);

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'standby is in recovery');

my $status = q{
    SELECT kind, name, lag, pending, replaying, review, watermark, source_max
      FROM etl_status() ORDER BY kind, name
};
my $on_primary = $primary->safe_psql('postgres', $status);
my $on_standby = $standby->safe_psql('postgres', $status);
is($on_standby, $on_primary, 'standby reports the same counts, watermark and source max as the primary');
like($on_standby, qr/^queue\|sb_new\|7\|7\|0\|0\|\|$/m, 'messages stored after the backup are counted');
like($on_standby, qr/^stage\|sb_stage\|100\|\|\|\|900\|1000$/m, 'stage lag from the streamed watermark');

# The counts agree with counting the messages themselves, on the standby.
is($standby->safe_psql('postgres', q{
    SELECT count(*) FROM (SELECT queue, status, count(*) AS n FROM dlq.messages GROUP BY 1, 2) m
    FULL JOIN (SELECT queue, status, sum(n) AS n FROM dlq.counts GROUP BY 1, 2 HAVING sum(n) <> 0) c
    USING (queue, status) WHERE m.n IS DISTINCT FROM c.n}), '0', 'counts exact on the standby');

is($standby->safe_psql('postgres', 'SELECT state FROM dlq.etl_worker_state()'), 'standby',
    'the worker is reported as standby');
# Queues sb_0, sb_1 and sb_2 hold 50 to 100 pending messages, over a threshold of 10.
is($standby->safe_psql('postgres', q{
    SET dlq.status_threshold = 10;
    SELECT string_agg(DISTINCT health, ',') FROM etl_status() WHERE name IN ('sb_0', 'sb_1', 'sb_2')}), 'stale',
    'over the threshold without replay activity: stale, not error, on a standby');
is($primary->safe_psql('postgres', q{
    SET dlq.status_threshold = 10;
    SET dlq.status_worker = 'stopped';
    SELECT string_agg(DISTINCT health, ',') FROM etl_status() WHERE name IN ('sb_0', 'sb_1', 'sb_2')}), 'error',
    'the same on the primary with its worker stopped: error');
is($standby->safe_psql('postgres', q{SELECT etl_status_json()->'worker'->>'state'}), 'standby',
    'etl_status_json answers on the standby');
is($standby->safe_psql('postgres', q{
    SELECT value FROM dlq.metrics WHERE metric = 'dlq_messages' AND queue = 'sb_new' AND status = 'pending'}),
    '7', 'dlq.metrics answers on the standby');
is($standby->safe_psql('postgres', q{SELECT name, health FROM etl_status('sb_new')}), 'sb_new|live',
    'etl_status(queue) on the standby');

# Writing functions are refused on the standby, as they must be.
my ($ret, $out, $err) = $standby->psql('postgres', q{SELECT etl_watermark('sb_stage', 950)});
isnt($ret, 0, 'etl_watermark fails on the standby');
like($err, qr/read-only transaction/, 'because the standby is read-only');

$standby->stop;
$primary->stop;
done_testing();
