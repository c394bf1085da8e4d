# Storage (dlq--1.0--1.1.sql, "Storage"): open messages in dlq.messages_live,
# closed ones moved into the ring of four slots, which dlq.worker_rotate turns
# and empties with TRUNCATE.  Checked step by step with the worker kept out,
# then with the worker turning the ring every second under a concurrent
# store / reprocess / claim / ack load: no message is ever lost (each one
# stored is open, closed or counted in a "purged" event) and dlq.counts
# always equals count(*).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('ring');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
dlq.naptime = 100ms
dlq.databases = 'ring_no_such_database'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dlq');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# dlq.counts must always equal count(*) per queue and state.
sub counts_exact
{
	return sql(q{
        SELECT count(*) = 0 FROM (
            SELECT queue, status, sum(n) AS n FROM dlq.counts GROUP BY 1, 2 HAVING sum(n) <> 0
            EXCEPT SELECT queue, status, count(*) FROM dlq.messages GROUP BY 1, 2) d});
}

# Where the messages of a queue are: partition => count.
sub where_are
{
	my ($queue) = @_;
	return sql(qq{
        SELECT string_agg(p || ':' || n, ' ' ORDER BY p) FROM (
            SELECT tableoid::regclass::text AS p, count(*) AS n FROM dlq.messages
             WHERE queue = '$queue' GROUP BY 1) x});
}

# --- closing moves a message into the current slot --------------------------
sql(q{
    SELECT dlq_configure(q, require_listener => false, resolved_retention => r)
      FROM (VALUES ('short', interval '0'), ('long', interval '7 days')) v(q, r);
    -- no archive here (tests/t/075_archive.pl): closed messages are purged
    UPDATE dlq.queues SET archive_retention = '0';
    SELECT count(dlq_store(q, jsonb_build_object('i', i), 'failed'))
      FROM (VALUES ('short'), ('long')) v(q), generate_series(1, 10) i;
    SELECT dlq_reprocess_all(q, max_messages => 6) FROM (VALUES ('short'), ('long')) v(q);
    SELECT count(*) FROM dlq_claim('short', 100);
    SELECT count(*) FROM dlq_claim('long', 100);
    SELECT dlq_ack(ARRAY(SELECT message_id FROM dlq.messages WHERE status = 'replaying' AND queue = 'short'));
    SELECT dlq_ack(ARRAY(SELECT message_id FROM dlq.messages WHERE status = 'replaying' AND queue = 'long'
                          ORDER BY message_id LIMIT 2));
    SELECT dlq_resolve(ARRAY(SELECT message_id FROM dlq.messages WHERE status = 'pending' AND queue = 'long'
                              ORDER BY message_id LIMIT 3));
});
is(where_are('short'), 'dlq.messages_closed_1:6 dlq.messages_live:4',
	'acked messages moved into slot 1, open ones stay live');
is(where_are('long'), 'dlq.messages_closed_1:5 dlq.messages_live:5',
	'... also resolved ones');
is(sql(q{SELECT string_agg(status || ':' || n, ' ' ORDER BY status) FROM
        (SELECT status, count(*) AS n FROM dlq.messages_closed_1 GROUP BY 1) x}),
	'resolved:11', 'slot 1 holds only closed messages');
ok(counts_exact(), 'dlq.counts equals count(*)');
is(sql(q{SELECT count(*) FROM dlq_list('short', status => 'any')}), '10',
	'a status any page spans the partitions');
is(sql(q{SELECT string_agg(message_id::text, ',' ORDER BY message_id) = string_agg(message_id::text, ',')
         FROM dlq_list(NULL, status => 'any', batch_size => 1000)}), 't',
	'... in message_id order');
is(sql(q{SELECT (dlq_get(min(message_id))).status FROM dlq.messages_closed_1}), 'resolved',
	'dlq_get finds a closed message');

# --- rotate, then empty a slot whose messages are mostly due -----------------
is(sql(q{SELECT dlq.worker_rotate('tester', every => '0')}),
	'{"moved": 0, "purged": 0, "emptied": 0, "rotated": true, "archived": 0, "archive_rotated": false}',
	'rotating closes slot 1; slot 2 is current');
is(sql(q{SELECT string_agg(slot || ':' || state, ' ' ORDER BY slot) FROM dlq.slots WHERE ring = 'closed'}),
	'1:closed 2:current 3:empty 4:empty 5:empty 6:empty 7:empty 8:empty', '... as dlq.slots says');
# A slot's messages count as due one second after it closed (dlq.slot_contents).
sql(q{SELECT pg_sleep(1.1)});
is(sql(q{SELECT dlq.worker_rotate('tester', every => '1 day')}),
	'{"moved": 5, "purged": 6, "emptied": 1, "rotated": false, "archived": 0, "archive_rotated": false}',
	'slot 1: 6 due messages purged, the 5 of the 7-day queue moved to the current slot');
is(where_are('short'), 'dlq.messages_live:4', '... short queue: closed ones gone');
is(where_are('long'), 'dlq.messages_closed_2:5 dlq.messages_live:5', '... long queue: kept, in slot 2');
is(sql(q{SELECT message_count || ' ' || (detail->>'resolved') || ' ' || (detail->>'partition')
         FROM dlq.events WHERE kind = 'purged' AND queue = 'short'}),
	'6 6 dlq.messages_closed_1', 'the purge is audited per queue');
ok(counts_exact(), 'dlq.counts equals count(*) after the TRUNCATE');
is(sql(q{SELECT string_agg(slot || ':' || state, ' ' ORDER BY slot) FROM dlq.slots WHERE ring = 'closed'}),
	'1:empty 2:current 3:empty 4:empty 5:empty 6:empty 7:empty 8:empty', 'slot 1 is empty again');

# --- a slot that keeps more than it would purge waits ------------------------
sql(q{SELECT dlq.worker_rotate('tester', every => '0')});    # 2 closed, 3 current
is(sql(q{SELECT dlq.worker_rotate('tester', every => '1 day')}),
	'{"moved": 0, "purged": 0, "emptied": 0, "rotated": false, "archived": 0, "archive_rotated": false}',
	'slot 2 (5 messages not yet due) is left alone');
is(sql(q{SELECT check_after > now() + interval '23 hours' FROM dlq.slots WHERE slot = 2}), 't',
	'... and looked at again after dlq.partition_interval');

# --- the ring wraps: the next slot is emptied first, keeping what is not due -
# 3 .. 8 and 1 take their turn; each closes without a message and is marked empty.
is(sql(q{SELECT string_agg(r::text, ' ') FROM
        (SELECT dlq.worker_rotate('tester', every => '0') r FROM generate_series(1, 6)) x}),
	join(' ', ('{"moved": 0, "purged": 0, "emptied": 0, "rotated": true, "archived": 0, "archive_rotated": false}') x 6),
	'six turns of the ring, nothing to purge');
is(sql(q{SELECT string_agg(slot || ':' || state, ' ' ORDER BY slot) FROM dlq.slots WHERE ring = 'closed'}),
	'1:current 2:closed 3:empty 4:empty 5:empty 6:empty 7:empty 8:closed', 'slot 1 is current again');
is(sql(q{SELECT dlq.worker_rotate('tester', every => '0')}),
	'{"moved": 5, "purged": 0, "emptied": 1, "rotated": true, "archived": 0, "archive_rotated": false}',
	'wrapping to slot 2 moves its 5 kept messages into the closing slot 1');
is(where_are('long'), 'dlq.messages_closed_1:5 dlq.messages_live:5', '... which holds them now');
ok(counts_exact(), 'dlq.counts equals count(*)');

# --- a slot in use is not waited for: the next round tries again -------------
sql(q{UPDATE dlq.queues SET resolved_retention = '0' WHERE queue = 'long'});
sql(q{SELECT pg_sleep(1.1)});
my $reader = $node->background_psql('postgres');
$reader->query_safe(q{BEGIN; SELECT count(*) FROM dlq.messages_closed_1});
is(sql(q{SELECT dlq.worker_rotate('tester', every => '1 day')}),
	'{"moved": 0, "purged": 0, "emptied": 0, "rotated": false, "archived": 0, "archive_rotated": false}',
	'a transaction holding slot 1: no wait, nothing done');
is(where_are('long'), 'dlq.messages_closed_1:5 dlq.messages_live:5', '... nothing lost');
$reader->query_safe('COMMIT');
$reader->quit;
is(sql(q{SELECT dlq.worker_rotate('tester', every => '1 day')}),
	'{"moved": 0, "purged": 5, "emptied": 1, "rotated": false, "archived": 0, "archive_rotated": false}',
	'once it ends, the slot is emptied');

# --- only under READ COMMITTED ----------------------------------------------
my ($rc, $out, $err) = $node->psql('postgres', q{
    BEGIN ISOLATION LEVEL REPEATABLE READ;
    SELECT dlq.slot_empty(1, 3, 'tester', '1s');});
like($err, qr/can only be emptied in a READ COMMITTED transaction/, 'REPEATABLE READ is refused');
($rc, $out, $err) = $node->psql('postgres', q{SELECT dlq.slot_empty(2, 2, 'tester', '1s')});
like($err, qr/no such pair of slots of the ring: 2 into 2/, 'a slot cannot be emptied into itself');
($rc, $out, $err) = $node->psql('postgres', q{SELECT dlq.slot_empty(17, 1, 'tester', '1s')});
like($err, qr/no such pair of slots of the ring: 17 into 1/, '... nor a slot the ring does not have');
($rc, $out, $err) = $node->psql('postgres', q{SELECT dlq.slot_empty(9, 1, 'tester', '1s')});
like($err, qr/no such pair of slots of the ring: 9 into 1/, '... nor a slot of one ring into the other');

# --- nobody else may turn the ring -------------------------------------------
sql(q{CREATE ROLE ring_operator LOGIN IN ROLE dlq_operator});
($rc, $out, $err) = $node->psql('postgres', q{SELECT dlq.worker_rotate('me', every => '0')},
	extra_params => [ '-U', 'ring_operator' ]);
like($err, qr/permission denied for function worker_rotate/, 'dlq_operator may not call dlq.worker_rotate');
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT dlq.slot_empty(2, 1, 'me', '1s')},
	extra_params => [ '-U', 'ring_operator' ]);
like($err, qr/permission denied for function slot_empty/, '... nor dlq.slot_empty');

# --- the worker turns the ring under load: nothing is lost -------------------
sql(q{
    SELECT dlq_configure('soak', require_listener => false, resolved_retention => '0');
    UPDATE dlq.queues SET archive_retention = '0' WHERE queue = 'soak';
    ALTER SYSTEM SET dlq.partition_interval = '1s';
    ALTER SYSTEM SET dlq.databases = '';
    SELECT pg_reload_conf();
});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'dlq worker'}),
	'the worker runs');

my $script = q{
DO $$
BEGIN
    FOR round IN 1 .. 40 LOOP
        PERFORM dlq_store('soak', jsonb_build_object('r', round, 'i', i), 'failed')
           FROM generate_series(1, 50) i;
        COMMIT;
        PERFORM dlq_reprocess_all('soak', max_messages => 40);
        COMMIT;
        PERFORM dlq_ack(ids) FROM (SELECT ARRAY(SELECT message_id FROM dlq_claim('soak', 30)) ids) c
          WHERE cardinality(ids) > 0;
        COMMIT;
        PERFORM dlq_resolve(ids) FROM (SELECT ARRAY(SELECT message_id FROM dlq.messages
                                                     WHERE queue = 'soak' AND status = 'replaying' LIMIT 5) ids) r
          WHERE cardinality(ids) > 0;
        COMMIT;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
};
my @h;
for my $c (1 .. 2)
{
	my ($o, $e) = ('', '');
	push @h, [ IPC::Run::start([ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
			'-c', $script ], '>', \$o, '2>', \$e, IPC::Run::timeout(300)), \$o, \$e ];
}
for my $x (@h)
{
	my ($h, $o, $e) = @$x;
	ok($h->finish, 'a load client finished without error') or diag($$e);
}
ok($node->poll_query_until('postgres', q{
    SELECT count(*) > 0 FROM dlq.events WHERE kind = 'purged' AND queue = 'soak' AND actor = 'dlq worker'}),
	'the worker purged closed messages by emptying slots');
is(sql(q{
    SELECT (SELECT count(*) FROM dlq.messages WHERE queue = 'soak')
         + (SELECT coalesce(sum(message_count), 0) FROM dlq.events WHERE kind = 'purged' AND queue = 'soak')}),
	'4000', 'every stored message is still there or was purged, none lost');
ok(counts_exact(), 'dlq.counts equals count(*) under the rotating worker');
is(sql(q{SELECT count(*) FROM dlq.messages_live WHERE queue = 'soak' AND status IN ('resolved', 'expired')}), '0',
	'closed messages never stay in the live partition');
is(sql(q{SELECT count(*) FROM dlq.worker_status() WHERE errors = 0}), '1',
	'the worker recorded no error');

# --- the worker vacuums the live partition once many messages left it ----------
# (autovacuum comes once a minute at most; the dead rows of moved messages
# would stay until then: tests/bench/README.md, "Storage").
is(sql(q{SELECT last_vacuum IS NULL FROM pg_stat_user_tables WHERE relid = 'dlq.messages_live'::regclass}),
	't', 'nobody vacuumed dlq.messages_live yet');
sql(q{SELECT count(dlq_store('vac', jsonb_build_object('i', i), 'failed')) FROM generate_series(1, 12000) i});
sql(q{SELECT dlq_resolve(ARRAY(SELECT message_id FROM dlq.messages WHERE queue = 'vac' AND status = 'pending'
                                ORDER BY message_id LIMIT 6000))}) for 1 .. 2;
ok($node->poll_query_until('postgres', q{
    SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relid = 'dlq.messages_live'::regclass}),
	'12000 messages moved out: the worker vacuums dlq.messages_live');
is(sql(q{SELECT count(*) FROM dlq.worker_status() WHERE errors = 0}), '1', '... without an error');

done_testing();
