# contrib/prometheus/dlq_queries.yaml works with the real Debian
# prometheus-postgres-exporter: a scrape shows the figures of dlq.metrics.
# Skipped when the exporter is not installed (apt-get install
# prometheus-postgres-exporter); 60_status.sql checks the view itself.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use File::Basename;
use Cwd 'abs_path';

my $exporter = '/usr/bin/prometheus-postgres-exporter';
plan skip_all => "$exporter is not installed" unless -x $exporter;

my $queries = abs_path(dirname(__FILE__) . '/../../contrib/prometheus/dlq_queries.yaml');
ok(-r $queries, 'queries file exists');

my $node = PostgreSQL::Test::Cluster->new('exporter');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'dlq'");
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION dlq;
    SELECT count(dlq_store('ex_a', '{}', 'boom')) FROM generate_series(1, 5);
    SELECT count(dlq_store('ex_b', '{}', 'boom')) FROM generate_series(1, 150);
    UPDATE dlq.messages SET status = 'review' WHERE queue = 'ex_a' AND message_id % 5 = 0;
    CREATE TABLE src (id bigint PRIMARY KEY);
    INSERT INTO src SELECT generate_series(1, 300);
    SELECT etl_register_stage('ex_stage', 'src', 'id');
    SELECT etl_watermark('ex_stage', 120);
    CREATE ROLE exporter LOGIN IN ROLE dlq_reader, pg_monitor;
    GRANT SELECT ON src TO exporter;
    -- test-only: pin the worker state so the figures do not depend on it
    ALTER ROLE exporter SET dlq.status_worker = 'stopped';
});

my $port = PostgreSQL::Test::Cluster::get_free_port();
my $dsn = sprintf('postgresql://exporter@:%d/postgres?host=%s&sslmode=disable', $node->port, $node->host);
my $log = $node->basedir . '/exporter.log';
my $pid = fork();
die "fork: $!" unless defined $pid;
if ($pid == 0)
{
    open(STDOUT, '>', $log);
    open(STDERR, '>&', \*STDOUT);
    $ENV{DATA_SOURCE_NAME} = $dsn;
    exec($exporter, "--web.listen-address=127.0.0.1:$port", "--extend.query-path=$queries",
        '--no-collector.database');
    exit 1;
}

my $body = '';
my $http = HTTP::Tiny->new(timeout => 10);
for (1 .. 100)
{
    my $res = $http->get("http://127.0.0.1:$port/metrics");
    if ($res->{success} && $res->{content} =~ /^dlq_worker_up/m)
    {
        $body = $res->{content};
        last;
    }
    select(undef, undef, undef, 0.2);
}
kill 'TERM', $pid;
waitpid($pid, 0);
note(`cat $log`) if $body eq '';

sub metric
{
    my ($name, %labels) = @_;
    foreach my $line (split /\n/, $body)
    {
        next unless $line =~ /^\Q$name\E\{([^}]*)\} (\S+)$/;
        my ($l, $v) = ($1, $2);
        my $all = 1;
        $all &&= ($l =~ /\b\Q$_\E="\Q$labels{$_}\E"/) foreach keys %labels;
        return $v if $all;
    }
    return undef;
}

like($body, qr/^pg_up 1$/m, 'the exporter connects');
is(metric('dlq_messages', queue => 'ex_a', status => 'pending'), '4', 'dlq_messages pending');
is(metric('dlq_messages', queue => 'ex_a', status => 'review'), '1', 'dlq_messages review');
is(metric('dlq_messages', queue => 'ex_b', status => 'pending'), '150', 'dlq_messages of another queue');
is(metric('dlq_queue_lag', queue => 'ex_b'), '150', 'dlq_queue_lag');
is(metric('dlq_queue_health', queue => 'ex_a'), '0', 'dlq_queue_health live = 0');
is(metric('dlq_queue_health', queue => 'ex_b'), '3', 'dlq_queue_health error = 3 (over the threshold, no worker)');
ok(defined metric('dlq_oldest_pending_age_seconds', queue => 'ex_a'), 'dlq_oldest_pending_age_seconds');
is(metric('dlq_queue_paused', queue => 'ex_a'), '0', 'dlq_queue_paused');
is(metric('dlq_stage_lag', stage => 'ex_stage'), '180', 'dlq_stage_lag');
is(metric('dlq_stage_watermark', stage => 'ex_stage'), '120', 'dlq_stage_watermark');
is(metric('dlq_stage_source_max', stage => 'ex_stage'), '300', 'dlq_stage_source_max');
is(metric('dlq_worker_up'), '0', 'dlq_worker_up');
my $logtext = slurp_file($log);
unlike($logtext, qr/level=error/, 'the exporter logged no errors');
like($body, qr/^pg_exporter_last_scrape_error 0$/m, 'the last scrape had no error');

$node->stop;
done_testing();
