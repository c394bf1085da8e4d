# ALTER EXTENSION dlq UPDATE from 1.0, with data in every state, gives
# exactly what a fresh install of the current version gives: the same schema
# (pg_dump --binary-upgrade --schema-only lists every member of the
# extension), the same data in the columns 1.0 had, and a worker that keeps
# working across the update.  Before the update, the new library serves the
# 1.0 schema where 1.0's behaviour is unchanged and says clearly that the
# update is needed where it needs a 1.1 object.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'dlq'
dlq.naptime = 1
});
$node->start;

my $current = $node->safe_psql('postgres',
    q{SELECT default_version FROM pg_available_extensions WHERE name = 'dlq'});
isnt($current, '1.0', "the default version ($current) is newer than 1.0");

$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('postgres', 'CREATE DATABASE fresh');

# A 1.0 schema with the new library loaded.  What needs a 1.1 object (a new
# queue records its creator) says clearly that the update is needed; what
# 1.0 already did keeps working.
$node->safe_psql('old', q{CREATE EXTENSION dlq VERSION '1.0'});
my ($rc, $out, $err) = $node->psql('old', q{SELECT dlq_configure('newq', max_attempts => 2)});
like($err, qr/extension "dlq" is at version 1\.0 but its library is version \Q$current\E.*HINT:  Run ALTER EXTENSION dlq UPDATE\./s,
    'before the update, creating a queue says that ALTER EXTENSION dlq UPDATE is needed');

ok($node->poll_query_until('old', q{
    SELECT last_error LIKE '%waiting for ALTER EXTENSION dlq UPDATE%' FROM dlq.worker_status()}),
    'before the update, the worker waits for ALTER EXTENSION dlq UPDATE and says so');

# Queues and captured rows as 1.0 wrote them, then messages in every state
# through the 1.0 API.
$node->safe_psql('old', q{
    CREATE TABLE items (id int PRIMARY KEY, qty int CHECK (qty > 0));
    INSERT INTO dlq.queues (queue, channel, require_listener, max_attempts)
    VALUES ('orders', 'dlq_orders', false, 1), ('items', 'dlq_items', false, 5);
    UPDATE dlq.queues SET replay_target = 'items'::regclass WHERE queue = 'items';
    INSERT INTO dlq.messages (queue, payload, error, sqlstate, error_class, max_attempts,
                              source_relation, operation)
    SELECT 'items', jsonb_build_object('id', i, 'qty', -1),
           'new row for relation "items" violates check constraint "items_qty_check"',
           '23514', 'permanent', 5, 'items'::regclass, 'INSERT'
      FROM generate_series(1, 6) i;
    SELECT dlq.recount();
    SELECT count(dlq_store('orders', jsonb_build_object('n', i), 'failure ' || i,
                           component => 'c' || (i % 3), sqlstate => '23505',
                           metadata => jsonb_build_object('i', i),
                           dedup_key => CASE WHEN i % 4 = 0 THEN 'k' || i END))
      FROM generate_series(1, 40) i;
    -- replaying: 20 handed to consumers; 5 acked (resolved), 3 nacked (review)
    SELECT dlq_reprocess(ARRAY(SELECT message_id FROM dlq.messages WHERE queue = 'orders'
                                ORDER BY message_id LIMIT 20));
    CREATE TEMP TABLE claimed AS SELECT message_id FROM dlq_claim('orders', 8) ORDER BY message_id;
    SELECT dlq_ack(ARRAY(SELECT message_id FROM claimed ORDER BY message_id LIMIT 5));
    SELECT dlq_nack(message_id, 'still failing', '40001')
      FROM (SELECT message_id FROM claimed ORDER BY message_id OFFSET 5) c;
    -- resolved by hand, discarded (removed, audited)
    SELECT dlq_resolve(ARRAY(SELECT message_id FROM dlq.messages WHERE status = 'pending'
                              AND queue = 'orders' ORDER BY message_id LIMIT 2), 'fixed upstream');
    SELECT dlq_discard(ARRAY(SELECT message_id FROM dlq.messages WHERE status = 'pending'
                              AND queue = 'orders' ORDER BY message_id LIMIT 1));
    -- expired: past its expiry, expired by the worker's own step
    UPDATE dlq.messages SET expires_at = now() - interval '1 second'
     WHERE message_id IN (SELECT message_id FROM dlq.messages WHERE status = 'pending'
                           AND queue = 'orders' ORDER BY message_id LIMIT 2);
    SELECT dlq.worker_expire(100);
    SELECT etl_register_stage('load_items', 'items', 'id');
    SELECT etl_watermark('load_items', 25);
    -- an isolate-mode intake view as 1.0's dlq_attach made it: its trigger
    -- names the table by OID
    CREATE VIEW items_intake AS
        SELECT x.id::pg_catalog.text AS id, x.qty::pg_catalog.text AS qty FROM public.items x WHERE false;
    DO $$ BEGIN EXECUTE format('CREATE TRIGGER dlq_intake INSTEAD OF INSERT ON public.items_intake'
        ' FOR EACH ROW EXECUTE FUNCTION dlq_capture_isolate(%L, %L)', 'items', 'items'::regclass::oid); END $$;
});

is($node->safe_psql('old',
    q{SELECT string_agg(DISTINCT status::text, ',' ORDER BY status::text) FROM dlq.messages}),
    'expired,pending,replaying,resolved,review',
    'the 1.0 schema holds messages in every state');

# What 1.0 had: its columns, and a fingerprint of every row in them.
my %columns;
for my $t (split /\n/, $node->safe_psql('old',
    q{SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'dlq' AND c.relkind IN ('r', 'p') ORDER BY 1}))
{
    $columns{$t} = $node->safe_psql('old', qq{
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
         WHERE attrelid = 'dlq.$t'::regclass AND attnum > 0 AND NOT attisdropped});
}
ok(scalar(keys %columns) >= 4, 'found the tables of dlq 1.0: ' . join(' ', sort keys %columns));
sub fingerprint
{
    my ($db) = @_;
    my %f;
    for my $t (sort keys %columns)
    {
        $f{$t} = $node->safe_psql($db, qq{
            SELECT count(*) || ':' || coalesce(md5(string_agg(r::text, '|' ORDER BY r::text)), '')
              FROM (SELECT $columns{$t} FROM dlq.$t) r});
    }
    return join("\n", map { "$_ $f{$_}" } sort keys %f);
}
my $before = fingerprint('old');
my $counts_before = $node->safe_psql('old',
    q{SELECT string_agg(queue || '/' || status || '=' || n, ',' ORDER BY queue, status)
        FROM dlq.counts WHERE n <> 0});

my $closed_1_0 = $node->safe_psql('old',
    q{SELECT string_agg(message_id::text, ',') FROM dlq.messages WHERE status IN ('resolved', 'expired')});

# The update itself.
$node->safe_psql('old', 'ALTER EXTENSION dlq UPDATE');
is($node->safe_psql('old', q{SELECT extversion FROM pg_extension WHERE extname = 'dlq'}),
    $current, "ALTER EXTENSION dlq UPDATE reaches $current");
is(fingerprint('old'), $before, 'every row of 1.0 is intact in the columns 1.0 had');
is($node->safe_psql('old',
    q{SELECT string_agg(queue || '/' || status || '=' || n, ',' ORDER BY queue, status)
        FROM dlq.counts WHERE n <> 0}),
    $counts_before, 'dlq.counts is unchanged by the update');
is($node->safe_psql('old', q{
    SELECT count(*) FROM (SELECT queue, status, count(*) n FROM dlq.messages GROUP BY 1, 2) m
      FULL JOIN (SELECT queue, status, n FROM dlq.counts WHERE n <> 0) c USING (queue, status)
     WHERE m.n IS DISTINCT FROM c.n}),
    '0', 'dlq.counts equals count(*) per queue and state after the update');
# Queues of 1.0 keep retrying every message (retry_on 'all'); new queues
# retry transient errors only (dlq--1.0--1.1.sql, "Operator workflow: queue settings").
is($node->safe_psql('old', q{
    SELECT string_agg(queue || ':' || retry_on, ' ' ORDER BY queue) FROM dlq.queues}),
    'items:all orders:all', 'queues of 1.0 keep retry_on all');

# The same schema as a fresh install: every member of the extension, with
# definitions, grants and comments (OIDs differ between databases; the
# user's table items exists only in the updated one).
$node->safe_psql('fresh', 'CREATE EXTENSION dlq');
sub schema_dump
{
    my ($db) = @_;
    my ($out, $err);
    IPC::Run::run([ 'pg_dump', '--schema-only', '--binary-upgrade', '--no-owner', '--exclude-table=public.items', '--exclude-table=public.items_intake',
                    '-d', $node->connstr($db) ], '>', \$out, '2>', \$err)
      or die "pg_dump $db: $err";
    my @lines = grep {
        !/binary_upgrade_set_|pg_catalog\.setval|^-- Dumped|^--$|^SET |^SELECT pg_catalog\.set_config|^\\(un)?restrict |^$/
    } split /\n/, $out;
    return join("\n", map { s/\b\d{5,}\b/OID/gr } @lines);
}
my $fresh_dump = schema_dump('fresh');
my $old_dump = schema_dump('old');
like($fresh_dump, qr/CREATE TABLE dlq\.messages/, 'the dump lists the members of the extension');
is($old_dump eq $fresh_dump ? 'same' : 'different', 'same',
    'pg_dump --schema-only of the updated 1.0 equals a fresh install');
if ($old_dump ne $fresh_dump)
{
    my $dir = $node->basedir;
    PostgreSQL::Test::Utils::append_to_file("$dir/fresh.sql", $fresh_dump);
    PostgreSQL::Test::Utils::append_to_file("$dir/old.sql", $old_dump);
    diag(scalar `diff -u $dir/fresh.sql $dir/old.sql | head -60`);
}

# The worker keeps working across the update: it expires a message that is
# due after the update, in the updated database.
$node->safe_psql('old', q{
    SELECT dlq_store('orders', '{"late": true}', 'after the update');
    UPDATE dlq.messages SET expires_at = now() - interval '1 second'
     WHERE payload = '{"late": true}';
});
ok($node->poll_query_until('old', q{
    SELECT status = 'expired' FROM dlq.messages WHERE payload = '{"late": true}'}),
    'the worker expires messages in the updated database');

# The API works on the updated schema as on a fresh one.
is($node->safe_psql('old', q{SELECT count(*) FROM dlq_list('orders', batch_size => 100)}),
   $node->safe_psql('old', q{SELECT count(*) FROM dlq.messages WHERE queue = 'orders' AND status = 'pending'}),
   'dlq_list lists the pending messages of 1.0 after the update');

# A row captured under 1.0 replays into its table after the update.
$node->safe_psql('old', q{
    UPDATE dlq.messages SET payload = jsonb_set(payload, '{qty}', '5')
     WHERE queue = 'items' AND payload->>'id' = '1';
    SELECT dlq_reprocess(ARRAY(SELECT message_id FROM dlq.messages
                                WHERE queue = 'items' AND payload->>'id' = '1'));
});
is($node->safe_psql('old', q{SELECT qty FROM items WHERE id = 1}), '5',
    'a row captured under 1.0 is re-applied to its table after the update');

# 1.0's intake view keeps working after the update, and dlq_detach finds it.
$node->safe_psql('old', q{INSERT INTO items_intake VALUES ('50', '3'), ('51', '-1')});
is($node->safe_psql('old', q{
    SELECT (SELECT qty FROM items WHERE id = 50) || ' ' ||
           (SELECT count(*) FROM dlq.messages WHERE queue = 'items' AND payload->>'id' = '51'
               AND source_relation = 'items'::regclass)}),
    '3 1', "1.0's intake view inserts good rows and diverts bad ones after the update");

# Storage (issue 12): the 1.0 table is the live partition, with its closed
# messages still in it; messages closed after the update go to the ring; the
# worker deletes 1.0's closed ones once past retention, as 1.0 did.
is($node->safe_psql('old', q{
    SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'dlq.messages'::regclass}),
    join(',', (map { "messages_archive_$_" } 1 .. 8), (map { "messages_closed_$_" } 1 .. 8), 'messages_live'),
    'dlq.messages is partitioned: the live partition, a ring of eight closed and one of eight archive slots');
is($node->safe_psql('old', qq{
    SELECT count(*) > 0 AND bool_and(tableoid = 'dlq.messages_live'::regclass)
      FROM dlq.messages WHERE message_id IN ($closed_1_0)}),
    't', "1.0's closed messages are in the live partition");
is($node->safe_psql('old', q{
    SELECT tableoid::regclass FROM dlq.messages WHERE payload = '{"late": true}'}),
    'dlq.messages_closed_1', 'a message closed after the update is in the current slot of the ring');
$node->safe_psql('old', q{UPDATE dlq.queues SET resolved_retention = '0'});
ok($node->poll_query_until('old', q{
    SELECT count(*) = 0 FROM dlq.messages_live WHERE status IN ('resolved', 'expired')}),
    "the worker deletes 1.0's closed messages past retention");
is($node->safe_psql('old', q{
    SELECT count(*) FROM (SELECT queue, status, count(*) n FROM dlq.messages GROUP BY 1, 2) m
      FULL JOIN (SELECT queue, status, sum(n) n FROM dlq.counts GROUP BY 1, 2 HAVING sum(n) <> 0) c
     USING (queue, status) WHERE m.n IS DISTINCT FROM c.n}),
    '0', 'dlq.counts still equals count(*)');

# Archive (issue 13): queues that existed at the update keep 1.0's behaviour
# (archive_retention 0: purged after resolved_retention); new ones keep an
# archive for 90 days.  The archive ring is the fresh install's, and the
# worker archives in the updated database once a queue asks for it.
is($node->safe_psql('old', q{SELECT string_agg(queue || '=' || archive_retention, ',' ORDER BY queue) FROM dlq.queues}),
    'items=00:00:00,orders=00:00:00', 'queues that existed at the update keep archive_retention 0');
$node->safe_psql('old', q{SELECT dlq_configure('newq', max_attempts => 2)});
is($node->safe_psql('old', q{SELECT archive_retention FROM dlq.queues WHERE queue = 'newq'}),
    '90 days', 'a queue created after the update keeps an archive for 90 days');
my $slots = q{SELECT string_agg(slot || ':' || ring || ':' || partition::text, ' ' ORDER BY slot) FROM dlq.slots};
is($node->safe_psql('old', $slots), $node->safe_psql('fresh', $slots), 'the rings are those of a fresh install');
$node->safe_psql('old', q{
    UPDATE dlq.queues SET archive_retention = '1 hour' WHERE queue = 'orders';
    SELECT dlq.worker_rotate('tester', every => '0');
});
ok($node->poll_query_until('old', q{
    SELECT status = 'archived' AND tableoid = 'dlq.messages_archive_1'::regclass
      FROM dlq.messages WHERE payload = '{"late": true}'}),
    'the worker archives a message closed after the update once its queue keeps an archive');
is($node->safe_psql('old', q{
    SELECT actor || ' ' || message_count FROM dlq.events WHERE kind = 'archived' AND queue = 'orders'}),
    'dlq worker 1', '... audited');

$node->safe_psql('old', q{SELECT dlq_detach('items')});
is($node->safe_psql('old', q{SELECT to_regclass('items_intake') IS NULL}), 't',
    "dlq_detach drops 1.0's intake view");

$node->stop;
done_testing();
