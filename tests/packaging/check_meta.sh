#!/usr/bin/env bash
# Checks META.json against the PGXN Meta Spec 1.0.x (https://pgxn.org/meta/spec.txt)
# offline, with nothing but core Perl (JSON::PP): the required keys, the
# formats the spec gives each of them (SemVer versions, terms, license
# shortcuts, prereq phases and version ranges, meta-spec version), no keys the
# spec does not know (x_ keys aside), and what must agree with the tree: the
# version is dlq.control's default_version as SemVer (1.1 -> 1.1.0), the files
# named in provides exist, LICENSE is the PostgreSQL License when license says
# postgresql.
#
#   bash tests/packaging/check_meta.sh             check META.json of this tree
#   bash tests/packaging/check_meta.sh FILE        check another META.json
#   bash tests/packaging/check_meta.sh --self-test also check that broken copies fail
#
# Prints one line per problem and "META.json: ok" or "META.json: N problems";
# exits non-zero on any problem.
set -uo pipefail
cd "$(dirname "$0")/../.."

check() {
    perl -MJSON::PP -e '
use strict;
use warnings;

my ($file) = @ARGV;
my @err;
sub err { push @err, join("", @_) }

sub slurp { my ($f) = @_; open(my $fh, "<", $f) or return undef; local $/; return scalar <$fh> }
my $text = slurp($file);
if (!defined $text) { print "$file: cannot be read: $!\n"; exit 1 }
my $m = eval { JSON::PP->new->utf8->relaxed(0)->decode($text) };
if (!$m || ref $m ne "HASH") {
    print "$file: not a JSON object", ($@ ? ": $@" : "\n");
    exit 1;
}

my $semver = qr/^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;
my $sv = qr/(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?/;
my $range = qr/^(?:(?:(?:[=!]=|[<>]=?)\s*)?(?:$sv|0))(?:,\s*(?:(?:[=!]=|[<>]=?)\s*)?$sv)*$/;
my $term = qr/^[^\/\\\s[:cntrl:]]{2,}$/;
my %licenses = map { $_ => 1 } qw(agpl_3 apache_1_1 apache_2_0 artistic_1 artistic_2 bsd freebsd
    gfdl_1_2 gfdl_1_3 gpl_1 gpl_2 gpl_3 lgpl_2_1 lgpl_3_0 mit mozilla_1_0 mozilla_1_1 openssl perl_5
    postgresql qpl_1_0 ssleay sun zlib open_source restricted unrestricted unknown);
my %top = map { $_ => 1 } qw(name version abstract maintainer license provides meta-spec description
    generated_by tags no_index prereqs release_status resources);

sub str { my ($v) = @_; defined $v && !ref $v && length $v }
sub custom { $_[0] =~ /^[xX]_./ }
sub path_ok { my ($p) = @_; str($p) && length($p) >= 2 && $p !~ m{^/} && $p !~ m{\\} }
sub keys_only {
    my ($what, $h, @allowed) = @_;
    my %a = map { $_ => 1 } @allowed;
    for my $k (sort keys %$h) { err("$what: unknown key \"$k\"") unless $a{$k} || custom($k) }
}

for my $k (qw(name version abstract maintainer license provides meta-spec)) {
    err("required key \"$k\" missing") unless exists $m->{$k};
}
for my $k (sort keys %$m) { err("unknown top-level key \"$k\"") unless $top{$k} || custom($k) }

err("name must be a term (2+ characters, no slash, backslash, space or control character)")
    if exists $m->{name} && !(str($m->{name}) && $m->{name} =~ $term);
err("version \"", $m->{version} // "", "\" is not a semantic version (MAJOR.MINOR.PATCH)")
    if exists $m->{version} && !(str($m->{version}) && $m->{version} =~ $semver);
for my $k (qw(abstract description generated_by)) {
    err("$k must be a non-empty string") if exists $m->{$k} && !str($m->{$k});
}

if (exists $m->{maintainer}) {
    my $v = $m->{maintainer};
    my @list = ref $v eq "ARRAY" ? @$v : ($v);
    err("maintainer must be a non-empty string or a non-empty array of them")
        if !@list || grep { !str($_) } @list;
}

if (exists $m->{license}) {
    my $v = $m->{license};
    if (ref $v eq "HASH") {
        err("license object must not be empty") unless %$v;
        for my $k (sort keys %$v) {
            err("license \"$k\" must map to a URI") unless str($v->{$k}) && $v->{$k} =~ m{^[a-z][a-z0-9+.-]*:\S+$}i;
        }
    } else {
        my @list = ref $v eq "ARRAY" ? @$v : ($v);
        err("license list must not be empty") unless @list;
        for (@list) { err("license \"", $_ // "null", "\" is not a PGXN license shortcut") unless str($_) && $licenses{$_} }
    }
}

if (exists $m->{"meta-spec"}) {
    my $s = $m->{"meta-spec"};
    if (ref $s ne "HASH") {
        err("meta-spec must be an object");
    } else {
        keys_only("meta-spec", $s, qw(version url));
        err("meta-spec version must be 1.0.x") unless str($s->{version}) && $s->{version} =~ /^1\.0\.\d+$/;
        err("meta-spec url must be https://pgxn.org/meta/spec.txt")
            if exists $s->{url} && !(str($s->{url}) && $s->{url} =~ m{^https?://pgxn\.org/meta/spec\.txt$});
    }
}

if (exists $m->{provides}) {
    my $p = $m->{provides};
    if (ref $p ne "HASH" || !%$p) {
        err("provides must be a non-empty object");
    } else {
        for my $ext (sort keys %$p) {
            my $e = $p->{$ext};
            err("provides: \"$ext\" is not a term") unless $ext =~ $term;
            if (ref $e ne "HASH") { err("provides.$ext must be an object"); next }
            keys_only("provides.$ext", $e, qw(file version abstract docfile docpath));
            err("provides.$ext.file must be a relative unix path") unless path_ok($e->{file});
            err("provides.$ext.file \"$e->{file}\" does not exist") if path_ok($e->{file}) && !-f $e->{file};
            err("provides.$ext.docfile \"$e->{docfile}\" does not exist")
                if exists $e->{docfile} && !(path_ok($e->{docfile}) && -f $e->{docfile});
            err("provides.$ext.version is not a semantic version")
                unless str($e->{version}) && $e->{version} =~ $semver;
            err("provides.$ext.abstract must be a non-empty string") if exists $e->{abstract} && !str($e->{abstract});
        }
    }
}

if (exists $m->{prereqs}) {
    my $p = $m->{prereqs};
    if (ref $p ne "HASH" || !%$p) {
        err("prereqs must be a non-empty object");
    } else {
        keys_only("prereqs", $p, qw(configure build test runtime develop));
        for my $phase (sort grep { !custom($_) } keys %$p) {
            my $ph = $p->{$phase};
            if (ref $ph ne "HASH" || !%$ph) { err("prereqs.$phase must be a non-empty object"); next }
            keys_only("prereqs.$phase", $ph, qw(requires recommends suggests conflicts));
            for my $rel (sort keys %$ph) {
                my $r = $ph->{$rel};
                if (ref $r ne "HASH" || !%$r) { err("prereqs.$phase.$rel must be a non-empty object"); next }
                for my $name (sort keys %$r) {
                    err("prereqs.$phase.$rel: \"$name\" is not a term") unless $name =~ $term;
                    my $v = $r->{$name};
                    err("prereqs.$phase.$rel.$name: \"", $v // "null", "\" is not a version range")
                        unless defined $v && !ref $v && "$v" =~ $range;
                }
            }
        }
    }
}

err("release_status must be stable, testing or unstable")
    if exists $m->{release_status} && !(str($m->{release_status}) && $m->{release_status} =~ /^(stable|testing|unstable)$/);

if (exists $m->{tags}) {
    my $t = $m->{tags};
    if (ref $t ne "ARRAY" || !@$t) {
        err("tags must be a non-empty array");
    } else {
        my %seen;
        for (@$t) {
            err("tag \"", $_ // "null", "\" must be 2-255 characters without slash, backslash or control characters")
                unless str($_) && length($_) <= 255 && /^[^\/\\[:cntrl:]]{2,}$/;
            err("tag \"$_\" repeated") if str($_) && $seen{$_}++;
        }
    }
}

if (exists $m->{no_index}) {
    my $n = $m->{no_index};
    if (ref $n ne "HASH" || !(exists $n->{file} || exists $n->{directory})) {
        err("no_index must be an object with file or directory");
    } else {
        keys_only("no_index", $n, qw(file directory));
        for my $k (grep { exists $n->{$_} } qw(file directory)) {
            my @list = ref $n->{$k} eq "ARRAY" ? @{ $n->{$k} } : ($n->{$k});
            err("no_index.$k must be a path or a non-empty list of paths") if !@list || grep { !path_ok($_) } @list;
        }
    }
}

if (exists $m->{resources}) {
    my $r = $m->{resources};
    if (ref $r ne "HASH" || !(exists $r->{homepage} || exists $r->{bugtracker} || exists $r->{repository})) {
        err("resources must be an object with homepage, bugtracker or repository");
    } else {
        keys_only("resources", $r, qw(homepage bugtracker repository));
    }
}

# What must agree with the tree.
my $control = slurp("dlq.control") // "";
my ($dv) = $control =~ /^default_version\s*=\s*\x27([^\x27]*)\x27/m;
if (!defined $dv) {
    err("dlq.control has no default_version");
} else {
    my $want = $dv =~ /^\d+\.\d+$/ ? "$dv.0" : $dv;
    err("version \"", $m->{version} // "", "\" is not dlq.control default_version $dv as SemVer ($want)")
        unless ($m->{version} // "") eq $want;
    err("provides.dlq.version is not $want")
        unless ref $m->{provides} eq "HASH" && ref $m->{provides}{dlq} eq "HASH" && ($m->{provides}{dlq}{version} // "") eq $want;
}
err("name must be dlq") unless ($m->{name} // "") eq "dlq";
my $pg = ref $m->{prereqs} eq "HASH" && ref $m->{prereqs}{runtime} eq "HASH"
    && ref $m->{prereqs}{runtime}{requires} eq "HASH" ? $m->{prereqs}{runtime}{requires}{PostgreSQL} : undef;
err("prereqs.runtime.requires.PostgreSQL must be 13.0.0") unless defined $pg && $pg eq "13.0.0";
if (($m->{license} // "") eq "postgresql") {
    my $lic = slurp("LICENSE") // "";
    err("license is postgresql but LICENSE is not the PostgreSQL License")
        unless $lic =~ /\APostgreSQL License\b/ && $lic =~ /Permission to use, copy, modify, and distribute this software/;
}

print "$file: $_\n" for @err;
print "$file: ", (@err ? scalar(@err) . " problems" : "ok"), "\n";
exit(@err ? 1 : 0);
' "$1"
}

if [ "${1:-}" != --self-test ]; then
    check "${1:-META.json}"
    exit
fi

# --self-test: META.json passes, and each broken copy is caught.
check META.json || exit 1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bad=0
# mutate NAME PERL: writes a copy of META.json changed by PERL (on $m) and checks that it fails.
mutate() {
    perl -MJSON::PP -e 'my $m = JSON::PP->new->decode(do { local $/; <STDIN> }); '"$2"'; print JSON::PP->new->canonical->encode($m)' \
        <META.json >"$tmp/$1.json"
    if check "$tmp/$1.json" >"$tmp/$1.out" 2>&1 || ! grep -q ': [0-9]* problems$' "$tmp/$1.out"; then
        echo "self-test: the broken copy \"$1\" was not caught:"
        cat "$tmp/$1.out"
        bad=$((bad + 1))
    else
        echo "self-test: $1: $(head -1 "$tmp/$1.out")"
    fi
}
mutate two-part-version '$m->{version} = "1.1"'
mutate no-provides 'delete $m->{provides}'
mutate no-maintainer 'delete $m->{maintainer}'
mutate license-case '$m->{license} = "PostgreSQL"'
mutate missing-file '$m->{provides}{dlq}{file} = "dlq--9.9.sql"'
mutate provides-version '$m->{provides}{dlq}{version} = "1.0.0"'
mutate meta-spec-2 '$m->{"meta-spec"}{version} = "2.0.0"'
mutate unknown-key '$m->{homepage} = "https://example.org"'
mutate bad-range '$m->{prereqs}{runtime}{requires}{PostgreSQL} = "13"'
mutate old-postgres '$m->{prereqs}{runtime}{requires}{PostgreSQL} = "12.0.0"'
mutate bad-phase '$m->{prereqs}{install} = {requires => {PostgreSQL => "13.0.0"}}'
mutate name-space '$m->{name} = "d lq"'
mutate empty-abstract '$m->{abstract} = ""'
mutate bad-status '$m->{release_status} = "final"'
if [ $bad -gt 0 ]; then
    echo "check_meta self-test: $bad broken copies passed"
    exit 1
fi
echo "check_meta self-test: every broken copy was caught"
