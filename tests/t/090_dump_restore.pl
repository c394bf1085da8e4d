# pg_dump of a database with dlq keeps every message, queue setting and audit
# event, and pg_restore into a new database brings them all back, with the
# id sequences positioned after the restored ids.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dlq'");
$node->start;

$node->safe_psql('postgres', q{
    CREATE DATABASE src;
});
$node->safe_psql('src', q{
    CREATE EXTENSION dlq;
    SELECT count(dlq_store(CASE WHEN i % 2 = 0 THEN 'even' ELSE 'odd' END,
                           jsonb_build_object('n', i, 'text', repeat('x', i)), 'failure ' || i,
                           component => 'c' || (i % 3), sqlstate => '23505',
                           metadata => jsonb_build_object('i', i), dedup_key => 'k' || (i % 50)))
      FROM generate_series(1, 500) i;
    UPDATE dlq.queues SET max_attempts = 9, retention = '3 days' WHERE queue = 'odd';
    INSERT INTO dlq.events (actor, kind, queue, message_count, message_ids, detail)
    VALUES ('tester', 'resolved', 'odd', 2, '{1,3}', '{"note": "by hand"}');
});

my $fingerprint = q{
    SELECT md5(string_agg(t, '|' ORDER BY t)) FROM (
        SELECT m::text AS t FROM dlq.messages m
        UNION ALL SELECT q::text FROM dlq.queues q
        UNION ALL SELECT e::text FROM dlq.events e) s
};
my $before = $node->safe_psql('src', $fingerprint);
my $counts = $node->safe_psql('src',
    'SELECT (SELECT count(*) FROM dlq.messages), (SELECT sum(occurrences) FROM dlq.messages), (SELECT count(*) FROM dlq.events)');
is($counts, '50|500|1', 'source holds 50 deduplicated messages, 500 occurrences, 1 event');

my $dump = $node->basedir . '/src.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('src'), '-f', $dump ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('dst'), $dump ], 'pg_restore');

is($node->safe_psql('dst', $fingerprint), $before, 'every message, queue and event restored unchanged');

# New ids continue after the restored ones.
my $max = $node->safe_psql('dst', 'SELECT max(message_id) FROM dlq.messages');
my $new = $node->safe_psql('dst', q{SELECT dlq_store('even', '{}', 'after restore')});
cmp_ok($new, '>', $max, 'message ids continue after the restore');
my $page = $node->safe_psql('dst', q{SELECT count(*) FROM dlq_list('odd', batch_size => 1000)});
is($page, '25', 'restored messages are listed');

$node->stop;
done_testing();
