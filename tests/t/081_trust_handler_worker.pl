# Automatic retries through a replay handler (DESIGN 7.1, 7.3): the worker
# calls the handler as the queue's retry_role, in a security-restricted
# operation, and checks again at every run that the role may execute it and
# that it still exists (a dropped function leaves its OID in the queue):
# otherwise the queue's retries are skipped with a warning and the message
# is left alone.  Every wait polls; nothing sleeps a fixed time.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('trust_handler_worker');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'dlq'
dlq.naptime = 100ms
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION dlq');

sub as_role
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

sub query
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql);
	return $ret == 0 ? $out : "error: $err";
}

sub log_shows
{
	my ($re, $offset) = @_;
	return eval { $node->wait_for_log($re, $offset); 1 } ? 1 : 0;
}

$node->safe_psql('postgres', q{
    CREATE ROLE hw_op LOGIN IN ROLE dlq_operator;
    CREATE SCHEMA hw AUTHORIZATION hw_op;
});
as_role('hw_op', q{
    CREATE TABLE hw.seen (id int, who name, role_refused boolean);
    CREATE FUNCTION hw.handle(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        refused boolean := false;
    BEGIN
        BEGIN
            PERFORM pg_catalog.set_config('role', 'none', false);
        EXCEPTION WHEN insufficient_privilege THEN
            refused := SQLERRM LIKE 'cannot set parameter "role" within security-%';
        END;
        INSERT INTO hw.seen VALUES ((p ->> 'id')::int, current_user, refused);
    END $$;
    SELECT dlq_configure('hw_q', replay_handler => 'hw.handle(jsonb)', auto_retry => true,
        retry_on => 'all', retry_base => '1 second', retry_max => '1 second');
});
is(query(q{SELECT retry_role FROM dlq.queues WHERE queue = 'hw_q'}), 'hw_op',
	'the role that turned auto_retry on is the retry_role');

# The worker retries through the handler, as hw_op, restricted.
$node->safe_psql('postgres', q{SELECT dlq_store('hw_q', '{"id": 1}', 'e')});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'resolved' FROM dlq.messages WHERE queue = 'hw_q' AND payload ->> 'id' = '1'}),
	'the worker resolved the message through the handler');
is(query(q{SELECT who || ':' || role_refused FROM hw.seen WHERE id = 1}), 'hw_op:true',
	'the handler ran as the retry_role and could not SET ROLE');

# The handler runs with the search_path its owner's sessions have (ALTER
# ROLE ... SET search_path; here the owner is also the retry_role), not the
# worker's pg_catalog: an unqualified name in it resolves as it does when
# the role replays by hand.
$node->safe_psql('postgres', q{ALTER ROLE hw_op SET search_path = hw, public});
as_role('hw_op', q{
    CREATE TABLE hw.plain (id int, path text);
    CREATE FUNCTION hw.handle_plain(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO plain VALUES ((p ->> 'id')::int, current_setting('search_path'));
    END $$;
    SELECT dlq_configure('hw_plain', replay_handler => 'hw.handle_plain(jsonb)', auto_retry => true,
        retry_on => 'all', retry_base => '1 second', retry_max => '1 second');
});
$node->safe_psql('postgres', q{SELECT dlq_store('hw_plain', '{"id": 7}', 'e')});
ok($node->poll_query_until('postgres', q{
    SELECT status = 'resolved' FROM dlq.messages WHERE queue = 'hw_plain'}),
	'a handler naming its table without a schema is retried by the worker');
is(query(q{SELECT id || ':' || path FROM hw.plain}), '7:hw, public',
	"the handler ran with its owner's own search_path");

# Without EXECUTE, then with the handler dropped: skipped with a warning.
sub skipped_retry
{
	my ($id, $revoke, $grant, $why, $name) = @_;
	my $offset = -s $node->logfile;
	as_role('hw_op', $revoke);
	$node->safe_psql('postgres', qq{SELECT dlq_store('hw_q', '{"id": $id}', 'e')});
	ok(log_shows(qr/WARNING:  automatic retries of queue "hw_q" skipped: $why/, $offset),
		"$name: the skip is logged with the queue's name");
	is(query(qq{
        SELECT status || ':' || attempts FROM dlq.messages WHERE queue = 'hw_q' AND payload ->> 'id' = '$id'}),
		'pending:0', "$name: the message was not retried");
	return unless $grant;
	as_role('hw_op', $grant);
	ok($node->poll_query_until('postgres', qq{
        SELECT status = 'resolved' FROM dlq.messages WHERE queue = 'hw_q' AND payload ->> 'id' = '$id'}),
		"$name: retried once the privilege is back");
}
skipped_retry(2, 'REVOKE EXECUTE ON FUNCTION hw.handle(jsonb) FROM PUBLIC, hw_op',
	'GRANT EXECUTE ON FUNCTION hw.handle(jsonb) TO hw_op',
	'role "hw_op" lacks EXECUTE on function hw.handle\(jsonb\)', 'without EXECUTE');
skipped_retry(3, 'DROP FUNCTION hw.handle(jsonb)', undef,
	'its replay handler, function with OID \d+, no longer exists', 'handler dropped');

# An operator's own replay of that queue: 42883 for the whole call.
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT dlq_reprocess_all('hw_q')});
like($err, qr/replay handler of queue "hw_q" does not exist/, 'a replay by hand fails clearly');

$node->stop;
done_testing();
