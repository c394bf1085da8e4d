# DROP EXTENSION dlq keeps messages also when the library is not preloaded
# (issue 11 finding 11; sql/84_drop_extension.sql covers the preloaded
# case): the event trigger loads the library itself, a value of
# dlq.drop_discards_messages set before the library is loaded is honoured,
# and DDL other than DROP EXTENSION / SCHEMA / OWNED never loads it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('drop_guard');
$node->init;
$node->start;

$node->safe_psql('postgres', q{CREATE EXTENSION dlq});
$node->safe_psql('postgres', q{SELECT dlq_store('dg', '{"n": 1}', 'failed')});

# Each psql below is a new session: the library is loaded only by what the
# session does.  Whether it is loaded shows in whether the dlq.* settings
# are defined.
my $loaded = q{SELECT count(*) FROM pg_settings WHERE name = 'dlq.drop_discards_messages'};

is($node->safe_psql('postgres', qq{
    CREATE TABLE dg_t (id int); DROP TABLE dg_t;
    CREATE SCHEMA dg_s; ALTER SCHEMA dg_s RENAME TO dg_s2;
    $loaded}),
	'0', 'other DDL does not call the guard, nor load the library');

my ($ret, $stdout, $stderr) = $node->psql('postgres', q{DROP EXTENSION dlq});
isnt($ret, 0, 'DROP EXTENSION with messages fails without preloading');
like($stderr, qr/cannot drop extension "dlq" while it holds messages/, 'with the guard\'s error');
like($stderr, qr/HINT:  .*dlq\.drop_discards_messages = on/, 'and its hint');

is($node->safe_psql('postgres', q{DROP SCHEMA dg_s2; SELECT 1}), '1',
	'DROP SCHEMA of another schema goes through');

($ret, $stdout, $stderr) = $node->psql('postgres', q{DROP SCHEMA public CASCADE});
like($stderr, qr/cannot drop extension "dlq" while it holds messages/,
	'DROP SCHEMA public CASCADE is refused too');
is($node->safe_psql('postgres', q{SELECT count(*) FROM dlq.messages}), '1', 'the message is kept');

# SET before the library is loaded makes a placeholder; the event trigger
# loads the library, whose definition of the setting takes the value over.
is($node->safe_psql('postgres', q{
    SET dlq.drop_discards_messages = on;
    DROP EXTENSION dlq;
    SELECT count(*) FROM pg_extension WHERE extname = 'dlq'}),
	'0', 'SET before the library is loaded, DROP EXTENSION goes through');

$node->safe_psql('postgres', q{CREATE EXTENSION dlq});
is($node->safe_psql('postgres', q{
    DROP EXTENSION dlq;
    SELECT count(*) FROM pg_extension WHERE extname = 'dlq'}),
	'0', 'an empty dlq is dropped without the setting');

$node->stop;
done_testing();
