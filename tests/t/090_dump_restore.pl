# pg_dump of a database with dlq keeps every message, queue setting and audit
# event, and pg_restore into a new database brings them all back, with the
# id sequences positioned after the restored ids.  Tables attached in
# isolate mode keep working there, where their OIDs differ: the intake
# trigger inserts into the table its view reads, whatever its arguments say.
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

# Isolate mode: iso_t attached by dlq_attach, with a reject limit, and
# iso_old with its intake trigger as dlq_attach wrote it before 1.1, naming
# the table by OID (which names nothing, or another table, once restored).
$node->safe_psql('src', q{
    CREATE TABLE iso_t (id int PRIMARY KEY, v int CHECK (v > 0));
    SELECT dlq_attach('iso_t', 'iso_q', 'isolate', max_errors => 1);
    INSERT INTO iso_t_intake VALUES ('1', '1'), ('2', '-2');
    CREATE TABLE iso_old (id int PRIMARY KEY, v int CHECK (v > 0));
    SELECT dlq_attach('iso_old', 'iso_old_q', 'isolate');
    DROP TRIGGER dlq_intake ON iso_old_intake;
    DO $$ BEGIN EXECUTE format('CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON iso_old_intake'
        ' FOR EACH ROW EXECUTE FUNCTION dlq_capture_isolate(%L, %L)', 'iso_old_q', 'iso_old'::regclass::oid); END $$;
});
my $src_oids = $node->safe_psql('src', q{SELECT 'iso_t'::regclass::oid || ',' || 'iso_old'::regclass::oid});
my (undef, $src_old_oid) = split /,/, $src_oids;
$before = $node->safe_psql('src', $fingerprint);

my $dump = $node->basedir . '/src.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('src'), '-f', $dump ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
# Objects made before the restore: the restored tables get other OIDs.
$node->safe_psql('dst', q{
    CREATE TABLE shift_1 (a int); CREATE TABLE shift_2 (a int); CREATE VIEW shift_3 AS SELECT 1 AS a;
});
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('dst'), $dump ], 'pg_restore');

is($node->safe_psql('dst', $fingerprint), $before, 'every message, queue and event restored unchanged');

# New ids continue after the restored ones.
my $max = $node->safe_psql('dst', 'SELECT max(message_id) FROM dlq.messages');
my $new = $node->safe_psql('dst', q{SELECT dlq_store('even', '{}', 'after restore')});
cmp_ok($new, '>', $max, 'message ids continue after the restore');
my $page = $node->safe_psql('dst', q{SELECT count(*) FROM dlq_list('odd', batch_size => 1000)});
is($page, '25', 'restored messages are listed');

# Isolate mode after the restore, where the tables have other OIDs.
isnt($node->safe_psql('dst', q{SELECT 'iso_t'::regclass::oid || ',' || 'iso_old'::regclass::oid}),
    $src_oids, 'the restored isolate-mode tables have other OIDs than in the dump');
like($node->safe_psql('dst', q{SELECT pg_get_triggerdef(oid) FROM pg_trigger
                                WHERE tgrelid = 'iso_old_intake'::regclass AND tgname = 'dlq_intake'}),
    qr/dlq_capture_isolate\('iso_old_q', '$src_old_oid'\)/,
    "iso_old's intake trigger still names the table's OID in the dump's database");
$node->safe_psql('dst', q{
    INSERT INTO iso_t_intake VALUES ('3', '3'), ('4', '-4');
    INSERT INTO iso_old_intake VALUES ('1', '1'), ('2', '-2');
});
is($node->safe_psql('dst', q{
    SELECT (SELECT string_agg(id::text, ',' ORDER BY id) FROM iso_t) || ' ' ||
           (SELECT string_agg(id::text, ',' ORDER BY id) FROM iso_old)}),
    '1,3 1', 'inserts through the restored intake views reach their tables');
is($node->safe_psql('dst', q{
    SELECT string_agg(queue || ':' || (payload->>'id') || ':' || source_relation::text, ' '
                      ORDER BY queue, message_id)
      FROM dlq.messages WHERE queue IN ('iso_q', 'iso_old_q')}),
    'iso_old_q:2:iso_old iso_q:2:iso_t iso_q:4:iso_t',
    'bad rows are diverted, recording the restored tables as their source');
my ($rc, $out, $err) = $node->psql('dst', q{INSERT INTO iso_t_intake VALUES ('5', '-5'), ('6', '-6')});
like($err, qr/too many failed rows for table "iso_t": 2 diverted, max_errors is 1/,
    'the restored reject limit fails a statement past it');
# Replay: the message restored from the dump and the one diverted after.
$node->safe_psql('dst', q{
    UPDATE dlq.messages SET payload = jsonb_set(payload, '{v}', '"7"') WHERE queue = 'iso_q';
    SELECT dlq_reprocess(ARRAY(SELECT message_id FROM dlq.messages WHERE queue = 'iso_q'));
});
is($node->safe_psql('dst', q{SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM iso_t}),
    '1=1,2=7,3=3,4=7', 'captured rows replay into the restored table');
is($node->safe_psql('dst', q{SELECT dlq_attach('iso_old', mode => 'isolate', max_errors => 3)}),
    'iso_old_q', 'dlq_attach finds the restored intake view and sets its limits');
$node->safe_psql('dst', q{SELECT dlq_detach('iso_t'); SELECT dlq_detach('iso_old')});
is($node->safe_psql('dst', q{
    SELECT count(*) FROM pg_class WHERE relname IN ('iso_t_intake', 'iso_old_intake')}),
    '0', 'dlq_detach finds and drops the restored intake views');

$node->stop;
done_testing();
