# dlq.counts is dumped (since 1.1: pg_restore loads each partition of
# dlq.messages directly, which the counting triggers of the parent do not
# see), so the restored counts are exact, with or without
# --disable-triggers; dlq.recount() rebuilds the same.  Stages and their
# watermarks are dumped.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('statusdump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dlq'");
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', q{
    CREATE EXTENSION dlq;
    SELECT count(dlq_store('d_' || (i % 4), jsonb_build_object('i', i), 'boom', dedup_key => 'k' || (i % 150)))
      FROM generate_series(1, 400) i;
    UPDATE dlq.messages SET status = 'resolved' WHERE message_id % 3 = 0;
    CREATE TABLE src (id integer PRIMARY KEY);
    INSERT INTO src SELECT generate_series(1, 50);
    SELECT etl_register_stage('d_stage', 'src', 'id');
    SELECT etl_watermark('d_stage', 20);
});

my $status = q{SELECT kind, name, lag, pending, resolved, watermark, source_max FROM etl_status() ORDER BY 1, 2};
my $mismatch = q{
    SELECT count(*) FROM (SELECT queue, status, count(*) AS n FROM dlq.messages GROUP BY 1, 2) m
    FULL JOIN (SELECT queue, status, sum(n) AS n FROM dlq.counts GROUP BY 1, 2 HAVING sum(n) <> 0) c
    USING (queue, status) WHERE m.n IS DISTINCT FROM c.n};
my $before = $node->safe_psql('src', $status);
like($before, qr/^stage\|d_stage\|30\|\|\|20\|50$/m, 'stage lag before the dump');

my $dump = $node->basedir . '/src.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('src'), '-f', $dump ], 'pg_dump');

$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('dst'), $dump ], 'pg_restore');
is($node->safe_psql('dst', $status), $before, 'status after restore equals status before');
is($node->safe_psql('dst', $mismatch), '0', 'restored counts are exact');

# Schema first, then data with triggers disabled: the counts are the dumped ones.
$node->safe_psql('postgres', 'CREATE DATABASE dst2');
$node->command_ok([ 'pg_restore', '--exit-on-error', '--section=pre-data', '-d', $node->connstr('dst2'), $dump ],
    'pg_restore pre-data');
$node->command_ok([ 'pg_restore', '--exit-on-error', '--data-only', '--disable-triggers',
    '-d', $node->connstr('dst2'), $dump ], 'pg_restore data with --disable-triggers');
$node->command_ok([ 'pg_restore', '--exit-on-error', '--section=post-data', '-d', $node->connstr('dst2'), $dump ],
    'pg_restore post-data');
is($node->safe_psql('dst2', $mismatch), '0', 'without triggers the counts are exact too');
is($node->safe_psql('dst2', 'SELECT dlq.recount() = (SELECT count(*) FROM dlq.messages)'), 't', 'dlq.recount()');
is($node->safe_psql('dst2', $mismatch), '0', 'after dlq.recount() the counts are exact');
is($node->safe_psql('dst2', $status), $before, 'and the status equals the status before');

# TRUNCATE empties the counts too (1.1: rows that carry cumulative totals stay, at 0).
$node->safe_psql('dst2', 'TRUNCATE dlq.messages');
is($node->safe_psql('dst2', 'SELECT count(*) FROM dlq.counts WHERE n <> 0 OR shard < 0'), '0',
    'TRUNCATE dlq.messages empties dlq.counts');
is($node->safe_psql('dst2', "SELECT sum(pending) FROM etl_status() WHERE kind = 'queue'"), '0',
    'and etl_status counts nothing');

$node->stop;
done_testing();
