# dlq_configure(queue, max_messages => n): beyond n open messages (pending,
# replaying, review) the worker expires the oldest pending and review ones,
# audited as 'capped' (DESIGN 7.2).  And the worker's automatic retries by
# error class: a default auto_retry queue retries a 40001, not a 23503.
#
# The step itself (dlq.worker_cap) is called directly in a database the
# worker does not serve (dlq.databases), so that each batch is exactly the
# one asked for; then the worker does it on its own in another.  Every
# wait polls; nothing sleeps a fixed time.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cap');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
dlq.naptime = 100ms
dlq.batch_size = 50
dlq.databases = 'postgres'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dlq');
$node->safe_psql('postgres', 'CREATE DATABASE direct');
$node->safe_psql('direct', 'CREATE EXTENSION dlq');

sub direct { return $node->safe_psql('direct', $_[0]); }

# n:status of a queue's messages, by id.
sub states
{
	my ($db, $queue) = @_;
	return $node->safe_psql($db, qq{
        SELECT string_agg((payload ->> 'n') || ':' || status, ' ' ORDER BY message_id)
          FROM dlq.messages WHERE queue = '$queue'});
}

# --- the step, batch by batch --------------------------------------------------
direct(q{
    SELECT dlq_configure('cap_a', require_listener => false, max_attempts => 1, max_messages => 3);
    SELECT dlq_store('cap_a', jsonb_build_object('n', i), 'failed ' || i) FROM generate_series(1, 8) i;
    SELECT dlq_reprocess(ARRAY(SELECT message_id FROM dlq.messages
                                WHERE queue = 'cap_a' AND payload ->> 'n' IN ('1', '2')));
    SELECT dlq_nack((SELECT message_id FROM dlq.messages WHERE queue = 'cap_a' AND payload ->> 'n' = '2'),
                    'still failing');
});
is(states('direct', 'cap_a'),
	'1:replaying 2:review 3:pending 4:pending 5:pending 6:pending 7:pending 8:pending',
	'eight open messages: one replaying, one in review, six pending');
is(direct(q{SELECT dlq.worker_cap(2, 'tester')}), '2', 'a batch takes at most batch_size');
is(states('direct', 'cap_a'),
	'1:replaying 2:expired 3:expired 4:pending 5:pending 6:pending 7:pending 8:pending',
	'the oldest pending and review messages go first; replaying ones stay');
is(direct(q{SELECT dlq.worker_cap(100, 'tester')}), '3', 'the next batch takes the rest of the excess');
is(states('direct', 'cap_a'),
	'1:replaying 2:expired 3:expired 4:expired 5:expired 6:expired 7:pending 8:pending',
	'three open messages are left: the cap');
is(direct(q{SELECT dlq.worker_cap(100, 'tester')}), '0', 'a queue at its cap is left alone');
is(direct(q{
    SELECT string_agg(actor || ':' || message_count || ':' || array_to_string(message_ids, ',')
                      || ':' || (detail ->> 'max_messages') || ':' || (detail ->> 'open'), ' '
                      ORDER BY event_id)
      FROM dlq.events WHERE queue = 'cap_a' AND kind = 'capped'}),
	join(' ',
		'tester:2:' . direct(q{SELECT string_agg(message_id::text, ',' ORDER BY message_id) FROM dlq.messages
                                WHERE queue = 'cap_a' AND payload ->> 'n' IN ('2', '3')}) . ':3:8',
		'tester:3:' . direct(q{SELECT string_agg(message_id::text, ',' ORDER BY message_id) FROM dlq.messages
                                WHERE queue = 'cap_a' AND payload ->> 'n' IN ('4', '5', '6')}) . ':3:6'),
	'one capped event per queue and batch, with the ids, the cap and the open count');
is(direct(q{SELECT sum(n) FROM dlq.counts WHERE queue = 'cap_a' AND status = 'expired'}), '5',
	'dlq.counts has the expired messages');

# One queue at a time, as the worker does after a failed batch.
direct(q{
    SELECT dlq_configure('cap_b', max_messages => 1);
    SELECT dlq_store('cap_b', jsonb_build_object('n', i), 'e') FROM generate_series(1, 3) i;
});
is(direct(q{SELECT dlq.worker_cap(100, 'tester', 'cap_a')}), '0', 'another queue is not touched');
is(direct(q{SELECT dlq.worker_cap(100, 'tester', 'cap_b')}), '2', 'the queue named is capped');
is(states('direct', 'cap_b'), '1:expired 2:expired 3:pending', 'the newest message is kept');

# More than 100 messages at once: the event has the count, not the ids.
direct(q{
    SELECT dlq_configure('cap_c', max_messages => 10);
    SELECT dlq_store('cap_c', jsonb_build_object('n', i), 'e') FROM generate_series(1, 150) i;
});
is(direct(q{SELECT dlq.worker_cap(1000, 'tester')}), '140', '140 expired in one batch');
is(direct(q{
    SELECT message_count || ':' || (message_ids IS NULL)
      FROM dlq.events WHERE queue = 'cap_c' AND kind = 'capped'}), '140:true',
	'an event for more than 100 messages has the count and no ids');
is(direct(q{SELECT min((payload ->> 'n')::int) FROM dlq.messages WHERE queue = 'cap_c' AND status = 'pending'}),
	'141', 'the newest ten are kept');

# Only replaying messages above the cap: nothing to expire.
direct(q{
    SELECT dlq_configure('cap_d', require_listener => false, max_messages => 1);
    SELECT dlq_store('cap_d', jsonb_build_object('n', i), 'e') FROM generate_series(1, 3) i;
    SELECT dlq_reprocess_all('cap_d');
});
is(direct(q{SELECT dlq.worker_cap(100, 'tester')}), '0', 'replaying messages are not expired');

# max_messages => 0 removes the cap; NULL and a batch of 0 take nothing.
direct(q{
    SELECT dlq_configure('cap_e', max_messages => 2);
    SELECT dlq_configure('cap_e', max_messages => 0);
    SELECT dlq_store('cap_e', jsonb_build_object('n', i), 'e') FROM generate_series(1, 5) i;
    SELECT dlq_configure('cap_f', max_messages => 1);
    SELECT dlq_store('cap_f', jsonb_build_object('n', i), 'e') FROM generate_series(1, 5) i;
});
is(direct(q{SELECT max_messages IS NULL FROM dlq.queues WHERE queue = 'cap_e'}), 't',
	'max_messages => 0 clears the cap');
is(direct(q{SELECT dlq.worker_cap(0, 'tester')}) . ':' . direct(q{SELECT dlq.worker_cap(NULL, 'tester')}),
	'0:0', 'a batch of 0 or NULL takes nothing');
is(direct(q{SELECT dlq.worker_cap(100, 'tester')}), '4', 'only the capped queue is expired');
is(states('direct', 'cap_e'), '1:pending 2:pending 3:pending 4:pending 5:pending',
	'the queue without a cap keeps every message');

# --- the worker does it on its own ---------------------------------------------
$node->safe_psql('postgres', q{
    SELECT dlq_configure('wcap', max_messages => 5);
    SELECT dlq_store('wcap', jsonb_build_object('n', i), 'e') FROM generate_series(1, 20) i;
});
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 5 AND min((payload ->> 'n')::int) = 16
      FROM dlq.messages WHERE queue = 'wcap' AND status = 'pending'}),
	'the worker expires the oldest messages down to max_messages');
is($node->safe_psql('postgres', q{
    SELECT sum(message_count) || ':' || bool_and(actor = 'dlq worker')
      FROM dlq.events WHERE queue = 'wcap' AND kind = 'capped'}), '15:true',
	'audited as capped, by the dlq worker');
$node->safe_psql('postgres', q{
    SELECT dlq_store('wcap', jsonb_build_object('n', i), 'e') FROM generate_series(21, 23) i;
});
ok($node->poll_query_until('postgres', q{
    SELECT string_agg(payload ->> 'n', ',' ORDER BY message_id) = '19,20,21,22,23'
      FROM dlq.messages WHERE queue = 'wcap' AND status = 'pending'}),
	'new messages push the oldest out');

# --- automatic retries by error class ------------------------------------------
# A default queue (retry_on 'transient') retries the 40001; the 23503 and
# the message without a SQLSTATE wait for an operator.
$node->safe_psql('postgres', q{
    SELECT dlq_configure('wretry', auto_retry => true, require_listener => false,
                         retry_base => '1 second', retry_max => '1 second');
    SELECT dlq_store('wretry', '{"n": 1}', 'violates foreign key constraint', sqlstate => '23503');
    SELECT dlq_store('wretry', '{"n": 2}', 'could not serialize access', sqlstate => '40001');
    SELECT dlq_store('wretry', '{"n": 3}', 'no sqlstate');
    UPDATE dlq.messages SET next_retry_at = now() - interval '1 second' WHERE queue = 'wretry';
});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'replaying' FROM dlq.messages WHERE queue = 'wretry' AND payload ->> 'n' = '2'}),
	'the 40001 is retried by the worker');
ok($node->poll_query_until('postgres', q{
    SELECT bool_and(next_retry_at IS NULL) FROM dlq.messages
     WHERE queue = 'wretry' AND payload ->> 'n' IN ('1', '3')}),
	'the permanent ones lose next_retry_at when they come due');
is(states('postgres', 'wretry'), '1:pending 2:replaying 3:pending',
	'and stay pending, with no attempt');
is($node->safe_psql('postgres', q{
    SELECT sum(message_count) FROM dlq.events WHERE queue = 'wretry' AND kind = 'retried'}), '1',
	'one message retried');

# retry_on => 'all' schedules the waiting ones again, and the worker retries them.
$node->safe_psql('postgres', q{SELECT dlq_configure('wretry', retry_on => 'all')});
ok($node->poll_query_until('postgres', q{
    SELECT bool_and(status = 'replaying') FROM dlq.messages WHERE queue = 'wretry'}),
	'with retry_on => all every message is retried');

done_testing();
