use super::*;

/// Imports `ccr` and checks that the output contains each of `expected`, in order.
fn check(ccr: &str, expected: &[&str]) {
    let imported = import(ccr).unwrap_or_else(|err| panic!("{ccr}: {err}"));
    let mut rest = imported.toml.as_str();
    for needle in expected {
        let Some(at) = rest.find(needle) else {
            panic!("{needle:?} not found (in order) in:\n{}", imported.toml);
        };
        rest = &rest[at + needle.len()..];
    }
}

/// Checks that importing `ccr` is refused at `line` with a message containing `needle`.
fn check_refused(ccr: &str, line: usize, needle: &str) {
    match import(ccr) {
        Err(Error::Refused {
            line: refused_line,
            message,
        }) => {
            assert_eq!(refused_line, line, "{ccr}: {message}");
            assert!(message.contains(needle), "{ccr}: {message}");
        }
        other => panic!("{ccr}: expected a refusal at line {line}, got {other:?}"),
    }
}

fn check_regex(posix: &str, rust: &str) {
    assert_eq!(posix_to_rust_regex(posix).as_deref(), Ok(rust), "{posix}");
}

fn check_regex_refused(posix: &str, needle: &str) {
    let err = posix_to_rust_regex(posix).expect_err(posix);
    assert!(err.contains(needle), "{posix}: {err}");
}

const CLUSTER: &str = "cluster c forward 10.0.0.1;\n";

#[test]
fn clusters_get_the_default_port_and_keep_instances() {
    check(
        "cluster c any_of 10.0.0.1 10.0.0.2:2004=b [::1] [::2]:2005 host.example=7;",
        &[
            "name = \"c\"",
            "method = \"any_of\"",
            "members = [\"10.0.0.1:2003\", \"10.0.0.2:2004=b\", \"[::1]:2003\", \"[::2]:2005\", \
             \"host.example:2003=7\"]",
        ],
    );
}

#[test]
fn hash_clusters_reproduce_carbon_c_relays_ring() {
    check(
        "cluster c fnv1a_ch replication 3 dynamic a:1=x b:1=y c:1=z;",
        &[
            "method = \"fnv1a_ch\"",
            "flavour = \"carbon-c-relay\"",
            "replication = 3",
            "dynamic = true",
        ],
    );
    check(
        "cluster c jump_fnv1a_ch a b;",
        &["flavour = \"carbon-c-relay\"", "replication = 1"],
    );
}

#[test]
fn member_options_that_change_nothing_are_accepted() {
    check(
        "cluster c failover a:1 proto tcp type linemode transport plain b:2;",
        &["members = [\"a:1\", \"b:2\"]"],
    );
}

#[test]
fn comments_and_multi_line_statements() {
    check(
        "# header\ncluster c # the name\n  forward\n  a:1 # first\n  b:2\n  ;\nmatch * # all\n send to c;",
        &["# line 2", "members = [\"a:1\", \"b:2\"]", "# line 7", "send_to = [\"c\"]"],
    );
}

#[test]
fn quoted_words_lose_their_backslashes_and_are_never_keywords() {
    // In carbon-c-relay's strings `\x` is `x`, so `"a\\.b"` is the regex `a\.b`.
    check(
        &format!("{CLUSTER}match \"x=y\" \"a\\\\.b\" \"stop\" send to c;"),
        &["match = \"x=y\"", "match = 'a\\.b'", "match = \"stop\""],
    );
    check_refused("cluster c forward \"a:1;\n", 1, "unterminated string");
    check_refused("cluster c forward \"\";", 1, "empty string");
}

#[test]
fn match_star_is_a_route_without_match_and_blackhole_stops() {
    check(
        &format!("{CLUSTER}match * send to c;\nmatch ^x send to blackhole;"),
        &[
            "[[route]]\nsend_to = [\"c\"]\n",
            "match = \"^x\"\nsend_to = [\"blackhole\"]\nstop = true",
        ],
    );
}

#[test]
fn each_expression_of_a_match_is_a_route() {
    check(
        &format!("{CLUSTER}match ^a ^b send to c stop;"),
        &[
            "match = \"^a\"\nsend_to = [\"c\"]\nstop = true",
            "match = \"^b\"\nsend_to = [\"c\"]\nstop = true",
        ],
    );
}

#[test]
fn rewrites_keep_backslash_groups() {
    check(
        "rewrite ^a\\.([^.]+)\\.(.*)$ into b.\\1.\\2;",
        &["match = '^a\\.([^.]+)\\.(.*)$'", "replace = 'b.\\1.\\2'"],
    );
    check(
        "rewrite ^(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)(l)$ into \\12-\\1\\g{2}0;",
        &["replace = '${12}-\\1${2}0'"],
    );
    check("rewrite ^a into $b;", &["replace = \"$$b\""]);
}

#[test]
fn rewrites_polymur_cannot_express_are_refused() {
    check_refused("rewrite ^(a) into \\_1;", 1, "modifier \\_");
    check_refused("rewrite ^(a) into \\^1;", 1, "modifier \\^");
    check_refused("rewrite ^(a) into \\.1;", 1, "modifier \\.");
    check_refused("rewrite ^a into b\\1;", 1, "without groups");
    check_refused(
        &format!("{CLUSTER}match * send to c;\n\nrewrite ^a into b;"),
        4,
        "rewrite after the match of line 2",
    );
}

#[test]
fn process_statements_are_noted_not_imported() {
    let imported = import(
        "listen type linemode 2003 proto tcp;\nstatistics submit every 60 seconds;\n\
         send statistics to c;\n",
    )
    .expect("imports");
    assert_eq!(imported.notes.len(), 3, "{:?}", imported.notes);
    assert!(imported.notes[0].starts_with("line 1: listen"));
    assert!(imported.notes[2].starts_with("line 3: send statistics"));
    assert!(imported.toml.contains("# not imported: line 2: statistics"));
}

#[test]
fn what_polymur_cannot_express_is_refused_with_its_line() {
    check_refused(
        "\n\naggregate ^a every 10 seconds expire after 20 seconds compute sum write to b;",
        3,
        "aggregate",
    );
    check_refused("include /etc/relay.d/*.conf;", 1, "include");
    check_refused("cluster f file /tmp/out;", 1, "file clusters");
    check_refused("cluster c forward useall a;", 1, "useall");
    check_refused("cluster c round_robin a;", 1, "unknown cluster type");
    check_refused("cluster c forward a proto udp;", 1, "proto udp");
    check_refused("cluster c forward a transport gzip;", 1, "compressed");
    check_refused("cluster c forward a transport plain ssl;", 1, "TLS");
    check_refused("cluster c forward ::1;", 1, "IPv6");
    check_refused("cluster c forward a:http;", 1, "port");
    check_refused("cluster c forward;", 1, "no members");
    check_refused(
        &format!("{CLUSTER}match ^a validate ^[0-9] else drop send to c;"),
        2,
        "validate",
    );
    check_refused(
        &format!("{CLUSTER}match ^a route using x send to c;"),
        2,
        "route using",
    );
    check_refused(
        &format!("{CLUSTER}match ^a send to d;"),
        2,
        "unknown cluster",
    );
    check_refused(
        &format!("{CLUSTER}match ^a send to c blackhole;"),
        2,
        "blackhole must be alone",
    );
    check_refused(
        &format!("{CLUSTER}cluster c forward b;"),
        2,
        "defined twice",
    );
    check_refused(
        &format!("{CLUSTER}match ^a\\1 send to c;"),
        2,
        "backreference",
    );
    check_refused("frobnicate;", 1, "unknown statement");
    check_refused("cluster c forward a:1\n", 1, "closing ';'");
    check_refused("cluster c forward a:1;\n;", 2, "empty statement");
    check_refused("cluster c forward a:1 !;", 1, "unexpected character '!'");
}

#[test]
fn posix_regexes_become_rust_regexes() {
    check_regex("^servers\\.[^.]+\\.cpu$", "^servers\\.[^.]+\\.cpu$");
    check_regex("(a|b)+c?d*", "(a|b)+c?d*");
    check_regex("[\\.]", "[\\\\.]");
    check_regex("[]a-]", "[\\]a\\-]");
    check_regex("[a-z[:digit:]_]", "[a-z[:digit:]_]");
    check_regex("[&~[]", "[\\&\\~\\[]");
    check_regex("a{2}b{1,}c{,3}d{1,2}", "a{2}b{1,}c{0,3}d{1,2}");
    check_regex(
        "\\w+\\W\\s\\S",
        "[_[:alnum:]]+[^_[:alnum:]][[:space:]][^[:space:]]",
    );
    check_regex("\\/\\-\\ x", "/\\- x");
    check_regex("a#b", "a\\#b");
}

#[test]
fn posix_regexes_without_a_rust_equivalent_are_refused() {
    check_regex_refused("(a)\\1", "backreference");
    check_regex_refused("\\bfoo", "GNU anchor");
    check_regex_refused("\\<foo\\>", "GNU anchor");
    check_regex_refused("\\d+", "plain 'd'");
    check_regex_refused("a*?", "repeated repetition");
    check_regex_refused("a+*", "repeated repetition");
    check_regex_refused("(?i)a", "repeats nothing");
    check_regex_refused("*a", "repeats nothing");
    check_regex_refused("a{x}", "no interval");
    check_regex_refused("[[.a.]]", "collating");
    check_regex_refused("[[:word:]]", "[:word:]");
    check_regex_refused("[abc", "without its ']'");
    check_regex_refused("a\\", "trailing backslash");
    check_regex_refused("a)", "unopened");
}
