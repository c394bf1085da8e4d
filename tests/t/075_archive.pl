# The archived state (DESIGN 7.2; dlq--1.0--1.1.sql, "Storage"): resolved and
# expired messages of a queue whose archive_retention is above 0 are copied
# once into the archive ring (slots 9-16) as 'archived' when their closed
# slot is emptied, after resolved_retention, and purged by TRUNCATE of their
# archive slot after archive_retention; a queue with archive_retention 0 is
# purged as before.  Checked step by step with the worker kept out, then with
# the worker turning both rings every few seconds under a store / reprocess /
# claim / ack load: every message stored is open, closed, archived or
# counted in a "purged" event, and dlq.counts always equals count(*).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('archive');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
dlq.naptime = 100ms
dlq.databases = 'archive_no_such_database'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dlq');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# dlq.counts must always equal count(*) per queue and state.
sub counts_exact
{
	return sql(q{
        SELECT count(*) = 0 FROM (SELECT queue, status, n FROM (
            SELECT queue, status, sum(n) AS n FROM dlq.counts GROUP BY 1, 2 HAVING sum(n) <> 0) c
          FULL JOIN (SELECT queue, status, count(*) AS n FROM dlq.messages GROUP BY 1, 2) m
          USING (queue, status, n) WHERE c.n IS NULL OR m.n IS NULL) d});
}

# Where the messages of a queue are: partition/status => count.
sub where_are
{
	my ($queue) = @_;
	return sql(qq{
        SELECT string_agg(p || '/' || s || ':' || n, ' ' ORDER BY p, s) FROM (
            SELECT tableoid::regclass::text AS p, status::text AS s, count(*) AS n FROM dlq.messages
             WHERE queue = '$queue' GROUP BY 1, 2) x});
}

sub rotate
{
	my ($every, $archive_every) = @_;
	return sql(qq{SELECT dlq.worker_rotate('tester', every => '$every', archive_every => '$archive_every')});
}

# Every column but status and slot, to see that archiving keeps them.
my $fingerprint = q{
    SELECT md5(string_agg((to_jsonb(m) - 'status' - 'slot')::text, ',' ORDER BY message_id))
      FROM dlq.messages m WHERE queue = 'arc'};

# --- the rings -----------------------------------------------------------------
is(sql(q{SELECT string_agg(slot || ':' || ring || ':' || state || ':' || partition::text, ' ' ORDER BY slot)
           FROM dlq.slots WHERE slot IN (1, 2, 8, 9, 10, 16)}),
	'1:closed:current:dlq.messages_closed_1 2:closed:empty:dlq.messages_closed_2'
	  . ' 8:closed:empty:dlq.messages_closed_8 9:archive:archiving:dlq.messages_archive_1'
	  . ' 10:archive:empty:dlq.messages_archive_2 16:archive:empty:dlq.messages_archive_8',
	'two rings of eight: closed slots 1-8, archive slots 9-16, each with one live slot');
sql(q{SELECT dlq_configure('fresh', require_listener => false)});
is(sql(q{SELECT archive_retention FROM dlq.queues WHERE queue = 'fresh'}),
	'90 days', 'a new queue keeps an archive for 90 days');

# --- archiving: once, when the closed slot is emptied ---------------------------
sql(q{
    SELECT dlq_configure(q, require_listener => false, resolved_retention => r)
      FROM (VALUES ('arc', interval '0'), ('zero', interval '0'), ('keep', interval '7 days')) v(q, r);
    UPDATE dlq.queues SET archive_retention = CASE queue WHEN 'zero' THEN interval '0' ELSE interval '1 hour' END;
    SELECT count(dlq_store(q, jsonb_build_object('i', i), 'failed', metadata => '{"m": 1}'))
      FROM (VALUES ('arc'), ('zero'), ('keep')) v(q), generate_series(1, 10) i;
    SELECT dlq_resolve(ARRAY(SELECT message_id FROM dlq.messages WHERE queue = q AND status = 'pending'
                              ORDER BY message_id LIMIT 6))
      FROM (VALUES ('arc'), ('zero')) v(q);
    SELECT dlq_resolve(ARRAY(SELECT min(message_id) FROM dlq.messages WHERE queue = 'keep'));
    UPDATE dlq.messages SET expires_at = now() - interval '1 second'
     WHERE message_id IN (SELECT message_id FROM dlq.messages WHERE queue = 'arc' AND status = 'pending'
                           ORDER BY message_id LIMIT 2);
    SELECT dlq.worker_expire(100, 'tester');
});
is(where_are('arc'), 'dlq.messages_closed_1/expired:2 dlq.messages_closed_1/resolved:6 dlq.messages_live/pending:2',
	'closed messages are in the current closed slot');
my $before = sql($fingerprint =~ s/WHERE queue = 'arc'/WHERE queue = 'arc' AND status IN ('resolved', 'expired')/r);
my $arc_ids = sql(q{SELECT string_agg(message_id::text, ',' ORDER BY message_id) FROM dlq.messages
                    WHERE queue = 'arc' AND status IN ('resolved', 'expired')});

is(rotate('0', '1 day'),
	'{"moved": 0, "purged": 0, "emptied": 0, "rotated": true, "archived": 0, "archive_rotated": false}',
	'slot 1 closes');
# A slot's messages count as due one second after it closed (dlq.slot_contents).
ok($node->poll_query_until('postgres', q{SELECT closed_at + interval '1.1 seconds' < now() FROM dlq.slots WHERE slot = 1}),
	'... one second later its messages are due');
is(rotate('1 day', '1 day'),
	'{"moved": 1, "purged": 6, "emptied": 1, "rotated": false, "archived": 8, "archive_rotated": false}',
	'emptying slot 1: 8 archived, 6 purged, the one not due moved on');
is(where_are('arc'), 'dlq.messages_archive_1/archived:8 dlq.messages_live/pending:2',
	'the resolved and expired messages of the archiving queue are archived in slot 9');
is(where_are('zero'), 'dlq.messages_live/pending:4', 'a queue with archive_retention 0 is purged at once');
is(where_are('keep'), 'dlq.messages_closed_2/resolved:1 dlq.messages_live/pending:9',
	'a message within its resolved_retention is kept in the closed ring, not archived');
is(sql($fingerprint =~ s/WHERE queue = 'arc'/WHERE queue = 'arc' AND status = 'archived'/r), $before,
	'archiving keeps every column of the message but its status');
is(sql(q{SELECT message_count || ' ' || array_to_string(message_ids, ',') || ' ' || (detail ->> 'resolved')
                || ' ' || (detail ->> 'expired') || ' ' || (detail ->> 'partition') || ' ' || (detail ->> 'archive')
                || ' ' || actor
           FROM dlq.events WHERE kind = 'archived' AND queue = 'arc'}),
	"8 $arc_ids 6 2 dlq.messages_closed_1 dlq.messages_archive_1 tester",
	'one archived event for the queue, with the ids, the count and where from and to');
is(sql(q{SELECT count(*) FROM dlq.events WHERE kind = 'purged' AND queue = 'arc'}), '0', '... and no purge event for it');
is(sql(q{SELECT message_count || ' ' || (detail ->> 'resolved') FROM dlq.events WHERE kind = 'purged' AND queue = 'zero'}),
	'6 6', 'the queue without archive: purged as before');
ok(counts_exact(), 'dlq.counts equals count(*) after archiving');
is(sql(q{SELECT string_agg(queue || ':' || status || ':' || n || ':' || due, ' ') FROM dlq.slot_contents(9, NULL)}),
	'arc:archived:8:false', 'dlq.slot_contents reads the archive slot from its shards');
is(sql(q{SELECT status || ' ' || (payload ->> 'i') || ' ' || (metadata ->> 'm')
           FROM dlq_get((SELECT min(message_id) FROM dlq.messages WHERE queue = 'arc' AND status = 'archived'))}),
	'archived 1 1', 'dlq_get shows an archived message as it was');
is(sql(q{SELECT dlq.recount() = (SELECT count(*) FROM dlq.messages)}), 't', 'dlq.recount() rebuilds the counts');
ok(counts_exact(), '... equal to count(*)');
is(sql(q{SELECT sum(n) FROM dlq.counts WHERE status = 'archived' AND shard BETWEEN -(9 * 64 + 64) AND -(9 * 64 + 1)}),
	'8', '... archived messages counted in their slot\'s shards');

# --- the archive ring turns; a slot not due waits until its first queue is -----
sql(q{UPDATE dlq.queues SET archive_retention = '2 seconds' WHERE queue = 'arc'});
is(rotate('1 day', '0'),
	'{"moved": 0, "purged": 0, "emptied": 0, "rotated": false, "archived": 0, "archive_rotated": true}',
	'the archive ring turns: slot 9 closes, slot 10 is live');
is(sql(q{SELECT string_agg(slot || ':' || state, ' ' ORDER BY slot) FROM dlq.slots WHERE ring = 'archive'}),
	'9:closed 10:archiving 11:empty 12:empty 13:empty 14:empty 15:empty 16:empty', '... as dlq.slots says');
is(rotate('1 day', '1 day'),
	'{"moved": 0, "purged": 0, "emptied": 0, "rotated": false, "archived": 0, "archive_rotated": false}',
	'slot 9 is not past archive_retention: left alone');
is(sql(q{SELECT check_after = closed_at + interval '3 seconds' FROM dlq.slots WHERE slot = 9}), 't',
	'... and looked at again when it is, not a whole dlq.archive_interval later');
ok($node->poll_query_until('postgres', q{SELECT check_after <= now() FROM dlq.slots WHERE slot = 9}), 'time passes');

# A slot in use is not waited for.
my $reader = $node->background_psql('postgres');
$reader->query_safe(q{BEGIN; SELECT count(*) FROM dlq.messages_archive_1});
is(rotate('1 day', '1 day'),
	'{"moved": 0, "purged": 0, "emptied": 0, "rotated": false, "archived": 0, "archive_rotated": false}',
	'a transaction reading archive slot 9: no wait, nothing done');
$reader->query_safe('COMMIT');
$reader->quit;
my ($rc, $out, $err) = $node->psql('postgres', q{
    BEGIN ISOLATION LEVEL REPEATABLE READ;
    SELECT dlq.slot_empty(9, 10, 'tester', '1s');});
like($err, qr/can only be emptied in a READ COMMITTED transaction/, 'REPEATABLE READ is refused for the archive ring too');

is(rotate('1 day', '1 day'),
	'{"moved": 0, "purged": 8, "emptied": 1, "rotated": false, "archived": 0, "archive_rotated": false}',
	'past archive_retention, archive slot 9 is emptied: 8 purged');
is(where_are('arc'), 'dlq.messages_live/pending:2', '... the archived messages are gone');
is(sql(q{SELECT message_count || ' ' || array_to_string(message_ids, ',') || ' ' || (detail ->> 'archived')
                || ' ' || (detail ->> 'partition')
           FROM dlq.events WHERE kind = 'purged' AND queue = 'arc'}),
	"8 $arc_ids 8 dlq.messages_archive_1", 'the purge is audited per queue, with the ids');
ok(counts_exact(), 'dlq.counts equals count(*) after the TRUNCATE');
is(sql(q{SELECT count(*) FROM dlq.messages_archive_1}), '0', 'the archive partition is empty');

# --- archive slots keep what is not yet due, moving it on ------------------------
sql(q{
    SELECT dlq_configure(q, require_listener => false, resolved_retention => '0')
      FROM (VALUES ('a_short'), ('a_long')) v(q);
    UPDATE dlq.queues SET archive_retention = CASE queue WHEN 'a_short' THEN interval '1 second'
                                                         ELSE interval '1 hour' END
     WHERE queue IN ('a_short', 'a_long');
    SELECT count(dlq_store(q, jsonb_build_object('i', i), 'failed'))
      FROM (VALUES ('a_short', 3), ('a_long', 2)) v(q, k), generate_series(1, k) i;
    SELECT dlq_resolve(ARRAY(SELECT message_id FROM dlq.messages WHERE queue IN ('a_short', 'a_long')));
});
rotate('0', '1 day');    # closed slot 2 closes
ok($node->poll_query_until('postgres', q{SELECT closed_at + interval '1.1 seconds' < now() FROM dlq.slots WHERE slot = 2}),
	'closed slot 2 is due');
# A reader of the slot does not stop the copy (EXCLUSIVE lock), but the
# TRUNCATE's ACCESS EXCLUSIVE is not had: the copy is undone, nothing is lost
# or doubled, and the next round tries again.
$reader = $node->background_psql('postgres');
$reader->query_safe(q{BEGIN; SELECT count(*) FROM dlq.messages_closed_2});
is(rotate('1 day', '1 day'),
	'{"moved": 0, "purged": 0, "emptied": 0, "rotated": false, "archived": 0, "archive_rotated": false}',
	'a transaction reading closed slot 2: nothing done');
is(sql(q{SELECT (SELECT count(*) FROM dlq.messages WHERE queue IN ('a_short', 'a_long')) || ' '
             || (SELECT count(*) FROM dlq.messages_closed_2) || ' '
             || (SELECT count(*) FROM dlq.events WHERE queue IN ('a_short', 'a_long') AND kind = 'archived')}),
	'5 6 0', '... the copy was undone: 5 messages, all still in slot 2, no event');
ok(counts_exact(), '... dlq.counts equals count(*)');
$reader->query_safe('COMMIT');
$reader->quit;
is(sql(q{SELECT dlq.worker_rotate('tester', every => '1 day', archive_every => '0') - 'rotated' - 'emptied'}),
	'{"moved": 1, "purged": 0, "archived": 5, "archive_rotated": true}',
	'archive slot 10 closes; 5 archived into slot 11 (keep\'s message moved on in the closed ring)');
rotate('1 day', '0');    # archive slot 11 closes, 12 is live
ok($node->poll_query_until('postgres', q{SELECT closed_at + interval '2.1 seconds' < now() FROM dlq.slots WHERE slot = 11}),
	'a_short is past its archive_retention in slot 11');
is(rotate('1 day', '1 day'),
	'{"moved": 2, "purged": 3, "emptied": 1, "rotated": false, "archived": 0, "archive_rotated": false}',
	'slot 11: a_short\'s 3 purged, a_long\'s 2 not due moved on into the live slot 12');
is(where_are('a_long'), 'dlq.messages_archive_4/archived:2', '... where they are');
is(sql(q{SELECT detail ->> 'archived' FROM dlq.events WHERE kind = 'purged' AND queue = 'a_short'}), '3',
	'... the purge audited');
ok(counts_exact(), 'dlq.counts equals count(*)');

# The ring wraps: live 12 -> 13 ... -> 16 -> 9 -> 10 -> 11 -> 12, which then
# holds a_long's 2, not due: they move into the closing slot 11.
is(sql(q{SELECT string_agg(r ->> 'moved', ' ') FROM
          (SELECT dlq.worker_rotate('tester', every => '1 day', archive_every => '0') r
             FROM generate_series(1, 8)) x}),
	'0 0 0 0 0 0 0 2', 'wrapping the archive ring moves the 2 not yet due into the closing slot');
is(where_are('a_long'), 'dlq.messages_archive_3/archived:2', '... archive slot 11');
is(sql(q{SELECT string_agg(slot || ':' || state, ' ' ORDER BY slot) FROM dlq.slots WHERE ring = 'archive'}),
	'9:empty 10:empty 11:closed 12:archiving 13:empty 14:empty 15:empty 16:empty', '... slot 12 live again');
ok(counts_exact(), 'dlq.counts equals count(*)');

# --- the worker archives and purges under load: nothing is lost ------------------
sql(q{
    SELECT dlq_configure(q, require_listener => false, resolved_retention => '0')
      FROM (VALUES ('wa'), ('wz')) v(q);
    UPDATE dlq.queues SET archive_retention = CASE queue WHEN 'wa' THEN interval '2 seconds' ELSE interval '0' END
     WHERE queue IN ('wa', 'wz');
    ALTER SYSTEM SET dlq.partition_interval = '1s';
    ALTER SYSTEM SET dlq.archive_interval = '2s';
    ALTER SYSTEM SET dlq.databases = '';
    SELECT pg_reload_conf();
});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'dlq worker'}),
	'the worker runs');

my $script = q{
DO $$
BEGIN
    FOR round IN 1 .. 30 LOOP
        PERFORM dlq_store(q, jsonb_build_object('r', round, 'i', i), 'failed')
           FROM (VALUES ('wa'), ('wz')) v(q), generate_series(1, 20) i;
        COMMIT;
        PERFORM dlq_reprocess_all(q, max_messages => 20) FROM (VALUES ('wa'), ('wz')) v(q);
        COMMIT;
        PERFORM dlq_ack(ids) FROM (SELECT ARRAY(SELECT message_id FROM dlq_claim(q, 15)) ids
                                     FROM (VALUES ('wa'), ('wz')) v(q)) c
          WHERE cardinality(ids) > 0;
        COMMIT;
        PERFORM dlq_resolve(ids) FROM (SELECT ARRAY(SELECT message_id FROM dlq.messages
                                                     WHERE queue = q AND status = 'replaying' LIMIT 5) ids
                                         FROM (VALUES ('wa'), ('wz')) v(q)) r
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
# Whatever is left open is closed now, so that every message reaches its end.
# (Nothing may be left: dlq_resolve refuses an empty array.)
sql(q{SELECT dlq_resolve(ids) FROM (SELECT ARRAY(SELECT message_id FROM dlq.messages WHERE queue IN ('wa', 'wz')
                                 AND status IN ('pending', 'replaying', 'review')) AS ids) o
       WHERE ids <> '{}'});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 0 FROM dlq.messages WHERE queue IN ('wa', 'wz')}, 't'),
	'the worker archives, then purges, every closed message');
is(sql(q{SELECT count(*) > 0 AND bool_and(actor = 'dlq worker') FROM dlq.events WHERE kind = 'archived' AND queue = 'wa'}),
	't', 'the worker archived messages of the queue with an archive');
is(sql(q{SELECT coalesce(sum(message_count), 0) FROM dlq.events WHERE kind = 'archived' AND queue = 'wa'}),
	'1200', '... each of its 1200 messages once');
is(sql(q{SELECT coalesce(sum(message_count), 0) || ' ' || bool_and(detail ? 'archived')
           FROM dlq.events WHERE kind = 'purged' AND queue = 'wa'}),
	'1200 true', '... and purged each from the archive ring, none from the closed ring');
is(sql(q{SELECT coalesce(sum(message_count), 0) || ' ' || bool_and(detail ? 'resolved')
           FROM dlq.events WHERE kind = 'purged' AND queue = 'wz'}),
	'1200 true', 'the queue without archive: its 1200 messages purged from the closed ring');
is(sql(q{SELECT count(*) FROM dlq.events WHERE kind = 'archived' AND queue = 'wz'}), '0', '... never archived');
is(sql(q{SELECT count(*) FROM dlq.events WHERE kind IN ('archived', 'purged') AND queue IN ('wa', 'wz')
           AND message_count <= 100 AND cardinality(message_ids) IS DISTINCT FROM message_count}),
	'0', 'events of at most 100 messages name them');
ok(counts_exact(), 'dlq.counts equals count(*) under the rotating worker');
is(sql(q{SELECT count(*) FROM dlq.worker_status() WHERE errors = 0}), '1', 'the worker recorded no error');

done_testing();
