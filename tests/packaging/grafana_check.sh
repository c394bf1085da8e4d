#!/usr/bin/env bash
# Checks the Grafana dashboard contrib/grafana/dlq.json against the exporter's
# queries file contrib/prometheus/dlq_queries.yaml, offline, with nothing but
# core Perl (JSON::PP):
#   - the dashboard is a JSON object with a title, a uid and panels, each
#     panel with a unique id, and a Prometheus query in every target;
#   - every metric name a PromQL expression uses (panels, rows' panels and
#     template variables' label_values()) is one the queries file exposes,
#     named as postgres_exporter names them: <query key>_<column>, for every
#     column whose usage is not LABEL;
#   - rate(), irate() and increase() are only applied to COUNTER columns, and
#     COUNTER columns only through them (a counter charted raw only climbs);
#   - every label a selector or a "by (...)" names is a LABEL column of one of
#     the queries the expression reads;
#   - every COUNTER the exporter has is charted somewhere.
#
#   bash tests/packaging/grafana_check.sh              check this tree's dashboard
#   bash tests/packaging/grafana_check.sh DASH [YAML]  check other files
#   bash tests/packaging/grafana_check.sh --self-test  also check that broken copies fail
#
# Prints "ok - ..." per file checked (and per broken copy refused), or
# "not ok - ..." followed by one "# " line per problem; exits non-zero on any.
set -uo pipefail
cd "$(dirname "$0")/../.."

check() {
    perl -MJSON::PP -e '
use strict;
use warnings;

my ($dash_file, $yaml_file) = @ARGV;
my @err;
sub err { push @err, join("", @_) }
sub slurp { my ($f) = @_; open(my $fh, "<", $f) or return undef; local $/; return scalar <$fh> }

# --- what the exporter exposes: key_column => usage, and each key'"'"'s labels ---
my $yaml = slurp($yaml_file);
if (!defined $yaml) { print "# $yaml_file: cannot be read: $!\n"; exit 1 }
my (%usage, %labels_of, %key_of);
my ($key, $col);
foreach my $line (split /\n/, $yaml)
{
    next if $line =~ /^\s*(#|$)/;
    if ($line =~ /^([A-Za-z_][A-Za-z0-9_]*):\s*$/) { $key = $1; $col = undef; next }
    if ($line =~ /^\s+-\s+([A-Za-z_][A-Za-z0-9_]*):\s*$/ && defined $key) { $col = $1; next }
    if ($line =~ /^\s+usage:\s*"?([A-Z]+)"?\s*$/ && defined $key && defined $col)
    {
        if ($1 eq "LABEL") { $labels_of{$key}{$col} = 1 }
        else { $usage{"${key}_$col"} = $1; $key_of{"${key}_$col"} = $key }
        $col = undef;
    }
}
err("$yaml_file: no metrics found") unless %usage;

# --- the dashboard ---
my $text = slurp($dash_file);
if (!defined $text) { print "# $dash_file: cannot be read: $!\n"; exit 1 }
my $d = eval { JSON::PP->new->utf8->decode($text) };
if (!$d || ref $d ne "HASH") { print "# $dash_file: not a JSON object", ($@ ? ": $@" : "\n"); exit 1 }
err("$dash_file: no title") unless defined $d->{title} && $d->{title} ne "";
err("$dash_file: no uid") unless defined $d->{uid} && $d->{uid} ne "";
err("$dash_file: no panels") unless ref $d->{panels} eq "ARRAY" && @{ $d->{panels} };

my (@exprs, %ids);
my @panels = @{ $d->{panels} || [] };
while (my $p = shift @panels)
{
    push @panels, @{ $p->{panels} } if ref $p->{panels} eq "ARRAY";
    my $what = "panel \"" . ($p->{title} // "?") . "\"";
    if (!defined $p->{id}) { err("$what has no id") }
    elsif ($ids{ $p->{id} }++) { err("$what: id $p->{id} is used twice") }
    next if ($p->{type} // "") eq "row";
    err("$what has no targets") unless ref $p->{targets} eq "ARRAY" && @{ $p->{targets} };
    foreach my $t (@{ $p->{targets} || [] })
    {
        if (!defined $t->{expr} || $t->{expr} !~ /\S/) { err("$what: a target has no expr") }
        else { push @exprs, [ $what, $t->{expr} ] }
    }
}
foreach my $v (@{ ($d->{templating} || {})->{list} || [] })
{
    my $q = ref $v->{query} eq "HASH" ? $v->{query}{query} : $v->{query};
    next unless ($v->{type} // "") eq "query" && defined $q;
    if ($q =~ /^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{[^}]*\})?\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$/)
    {
        my ($m, $l) = ($1, $2);
        if (!$usage{$m}) { err("variable $v->{name}: metric $m is not exposed by $yaml_file") }
        elsif (!$labels_of{ $key_of{$m} }{$l}) { err("variable $v->{name}: $m has no label $l") }
    }
    else { err("variable $v->{name}: query \"$q\" is not label_values(metric, label)") }
}

# --- the metric names and labels of each PromQL expression ---
my %keyword = map { $_ => 1 } qw(by without on ignoring group_left group_right bool and or unless offset
    sum min max avg count stddev stdvar topk bottomk quantile count_values group inf nan);
my %charted;
foreach my $e (@exprs)
{
    my ($what, $x) = @$e;
    my @labels;
    $x =~ s/"(?:[^"\\]|\\.)*"/""/g;                          # strings
    while ($x =~ s/\{([^{}]*)\}//) {                         # selectors: keep their label names
        push @labels, ($1 =~ /([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)/g);
    }
    $x =~ s/\[[^\]]*\]//g;                                   # ranges
    $x =~ s{\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)}
           {push @labels, ($1 =~ /([A-Za-z_][A-Za-z0-9_]*)/g); " "}ge;
    $x =~ s/\$\{?[A-Za-z_][A-Za-z0-9_]*\}?//g;               # Grafana variables
    my @metrics;
    while ($x =~ /([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?/g)
    {
        my ($name, $call) = ($1, $2);
        next if $call || $keyword{ lc $name } || $name =~ /^\d/;
        push @metrics, $name;
    }
    err("$what: \"$e->[1]\" uses no metric") unless @metrics;
    foreach my $m (@metrics)
    {
        if (!$usage{$m}) { err("$what: metric $m is not exposed by $yaml_file"); next }
        $charted{$m} = 1;
        my $in_rate = $e->[1] =~ /\b(?:rate|irate|increase)\s*\(\s*\Q$m\E\b/;
        if ($usage{$m} eq "COUNTER" && !$in_rate) { err("$what: counter $m is charted without rate() or increase()") }
        if ($usage{$m} ne "COUNTER" && $in_rate) { err("$what: rate() of $m, which is a $usage{$m}") }
    }
    my %known = map { %{ $labels_of{ $key_of{$_} } || {} } } grep { $usage{$_} } @metrics;
    foreach my $l (@labels)
    {
        err("$what: label $l is not one of the metric(s) " . join(", ", @metrics)) unless $known{$l} || $l eq "__name__";
    }
}
foreach my $m (sort grep { $usage{$_} eq "COUNTER" } keys %usage)
{
    err("$dash_file: counter $m is not charted") unless $charted{$m};
}

if (@err) { print "# $_\n" foreach @err; exit 1 }
printf "# %d expressions, %d metrics of %s\n", scalar(@exprs), scalar(keys %charted), $yaml_file;
exit 0;
' "$@"
}

dash=contrib/grafana/dlq.json
yaml=contrib/prometheus/dlq_queries.yaml
self_test=false
case ${1:-} in
    --self-test) self_test=true ;;
    "") ;;
    *) dash=$1; yaml=${2:-$yaml} ;;
esac

failed=0
if out=$(check "$dash" "$yaml" 2>&1); then
    echo "ok - grafana_check.sh: $dash uses only metrics $yaml exposes"
    [ -n "$out" ] && echo "$out"
else
    echo "not ok - grafana_check.sh: $dash"
    echo "$out"
    failed=1
fi

if $self_test; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # Each broken copy must be refused: name, sed expression.
    while IFS='|' read -r name expr; do
        sed -e "$expr" "$dash" >"$tmp/dash.json"
        if check "$tmp/dash.json" "$yaml" >"$tmp/out" 2>&1; then
            echo "not ok - grafana_check.sh self-test: $name was not refused"
            failed=1
        else
            echo "ok - grafana_check.sh self-test: $name is refused"
        fi
    done <<'EOF'
a metric the exporter does not have|0,/dlq_queue_lag{/s//dlq_queue_lagg{/
a counter charted raw|0,/rate(dlq_messages_stored_total/s//abs(dlq_messages_stored_total/
rate() of a gauge|0,/(dlq_oldest_pending_age_seconds{\([^}]*}\)/s//(rate(dlq_oldest_pending_age_seconds{\1[5m])/
a label the metric does not have|0,/sum by (queue) (dlq_queue_lag/s//sum by (queue, status) (dlq_queue_lag/
broken JSON|0,/"panels"/s//"panels" "/
EOF
    # and a queries file that lost a counter makes the dashboard wrong
    grep -v 'replay_failed_total' "$yaml" >"$tmp/q.yaml"
    if check "$dash" "$tmp/q.yaml" >"$tmp/out" 2>&1; then
        echo "not ok - grafana_check.sh self-test: a metric missing from the queries file was not noticed"
        failed=1
    else
        echo "ok - grafana_check.sh self-test: a metric missing from the queries file is noticed"
    fi
fi
exit $failed
