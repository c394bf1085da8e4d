# Reject limits under COPY, from a client: psql's \copy of a file with bad
# rows into a table attached with dlq_attach(..., max_errors, max_error_ratio).
# Rows within the budget are diverted with the file's line number
# (metadata copy_line); a budget passed in the middle of a 100k-line COPY
# stops it at the line past the budget and keeps nothing; the limits survive
# pg_dump and pg_restore.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('reject');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dlq'");
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', q{
    CREATE EXTENSION dlq;
    CREATE TABLE orders (id int PRIMARY KEY, qty int NOT NULL CHECK (qty > 0));
    CREATE TABLE big (id int PRIMARY KEY, qty int NOT NULL CHECK (qty > 0));
    CREATE TABLE big_plain (id int PRIMARY KEY, qty int NOT NULL CHECK (qty > 0));
    SELECT dlq_attach('orders', max_errors => 20, max_error_ratio => 0.05);
    SELECT dlq_attach('big', max_errors => 10);
});
my $dir = PostgreSQL::Test::Utils::tempdir;

# write_file(name, n, bad): a tab-separated file of n lines "id qty", the
# lines in the set %$bad with qty -1; returns its path.
sub write_file
{
	my ($name, $n, $bad) = @_;
	my $path = "$dir/$name";
	open(my $fh, '>', $path) or die "could not write $path: $!";
	print $fh "$_\t" . ($bad->{$_} ? -1 : 1) . "\n" for 1 .. $n;
	close($fh);
	return $path;
}

# --- within the budget: the bad lines are diverted with their line numbers ---
my %bad = map { ($_ * 97) => 1 } 1 .. 10;    # 10 bad lines of 1000 (1%)
my $file = write_file('orders.tsv', 1000, \%bad);
my ($rc, $out, $err) = $node->psql('src', "\\copy orders FROM '$file'");
is($rc, 0, '\copy of 1000 lines with 10 bad ones passes max_errors 20 and ratio 0.05')
  or diag($err);
is($node->safe_psql('src', 'SELECT count(*) FROM orders'), '990', 'the 990 good rows are in');
is( $node->safe_psql('src', q{
        SELECT string_agg(metadata ->> 'copy_line', ',' ORDER BY (metadata ->> 'copy_line')::int)
          FROM dlq.messages WHERE queue = 'orders'}),
	join(',', sort { $a <=> $b } keys %bad),
	'each captured row records its line in the file (metadata copy_line)');
is( $node->safe_psql('src', q{
        SELECT count(*) FROM dlq.messages
         WHERE queue = 'orders' AND (payload ->> 'id') <> (metadata ->> 'copy_line')}),
	'0', 'and that line holds the row (id = line here)');

# --- past the ratio: 60 bad lines of 1000 (6%, max_errors raised) ------------
$node->safe_psql('src', q{SELECT dlq_attach('orders', max_errors => 100, max_error_ratio => 0.05)});
%bad = map { (1000 + $_ * 16) => 1 } 1 .. 60;
$file = write_file('orders2.tsv', 1000, {});
open(my $fh, '>', $file) or die;
print $fh (1000 + $_) . "\t" . ($bad{ 1000 + $_ } ? -1 : 1) . "\n" for 1 .. 1000;
close($fh);
($rc, $out, $err) = $node->psql('src', "\\copy orders FROM '$file'");
isnt($rc, 0, '\copy with 6% bad rows fails max_error_ratio 0.05');
like($err, qr/too many failed rows for table "orders": 60 of 1000 diverted, max_error_ratio is 0\.05/,
	'the error names the table, the count and the ratio');
is( $node->safe_psql('src', q{
        SELECT count(*) || ' rows, ' || (SELECT count(*) FROM dlq.messages WHERE queue = 'orders')
               || ' messages' FROM orders}),
	'990 rows, 10 messages', 'nothing of the failed COPY is kept');

# --- a budget passed in the middle of a 100k-line COPY stops it there --------
%bad = map { $_ => 1 } 50_001 .. 50_020;
my $big = write_file('big.tsv', 100_000, \%bad);
my $t0 = time;
($rc, $out, $err) = $node->psql('src', "\\set VERBOSITY verbose\n\\copy big FROM '$big'");
my $failed_ms = int((time - $t0) * 1000);
isnt($rc, 0, 'the 100k-line \copy fails at the 11th bad row (max_errors 10)');
like($err, qr/DLQ02: too many failed rows for table "big": 11 diverted, max_errors is 10/,
	'with SQLSTATE DLQ02');
like($err, qr/CONTEXT:\s+COPY big, line 50011\b/,
	'COPY stopped at line 50011 of 100000: the row past the budget');
is( $node->safe_psql('src', q{
        SELECT (SELECT count(*) FROM big) || ' rows, '
               || (SELECT count(*) FROM dlq.messages WHERE queue = 'big') || ' messages'}),
	'0 rows, 0 messages', 'nothing of it is kept: not the 50000 rows before, not the 10 diverted');
$t0 = time;
($rc, $out, $err) = $node->psql('src', "\\copy big_plain FROM '$big'");
my $plain_ms = int((time - $t0) * 1000);
isnt($rc, 0, 'the same file into a table without dlq fails at its first bad row');
$node->safe_psql('src', q{ALTER TABLE big_plain DROP CONSTRAINT big_plain_qty_check});
$t0 = time;
$node->psql('src', "\\copy big_plain FROM '$big'");
my $whole_ms = int((time - $t0) * 1000);
is($node->safe_psql('src', 'SELECT count(*) FROM big_plain'), '100000', 'the whole file loads without the CHECK');
note("100k-line \\copy: stopped by max_errors at line 50011 in $failed_ms ms; "
	  . "the whole file into a plain table in $whole_ms ms");

# --- the limits survive pg_dump and pg_restore -----------------------------
my $dump = "$dir/src.dump";
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('src'), '-f', $dump ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('dst'), $dump ],
	'pg_restore');
like( $node->safe_psql('dst', q{
        SELECT pg_get_triggerdef(oid) FROM pg_trigger
         WHERE tgrelid = 'orders'::regclass AND tgname = 'zzz_dlq_capture_limits'}),
	qr/'max_errors=100', 'max_error_ratio=0\.05'/, 'the restored table keeps its limits');
($rc, $out, $err) = $node->psql('dst', "\\copy orders FROM '$file'");
like($err, qr/too many failed rows for table "orders": 60 of 1000 diverted/,
	'and they hold in the restored database');
is($node->safe_psql('dst', q{SELECT count(*) FROM dlq.messages WHERE queue = 'orders'}), '10',
	'the restored messages are all there, none of the failed COPY');
$node->safe_psql('dst', q{SELECT dlq_attach('orders', max_errors => 100, max_error_ratio => 0.1)});
($rc, $out, $err) = $node->psql('dst', "\\copy orders FROM '$file'");
is($rc, 0, 'dlq_attach in the restored database changes them') or diag($err);

$node->stop;
done_testing();
