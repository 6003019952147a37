//! Tests for [`super::check`]: one case per rule, each a single call to the `check` helper.

use bytes::BytesMut;

use super::numbers::parse_digits;
use super::{check as check_line, Invalid, Note, Rules, Valid};
use crate::config::PathPolicy;

/// The clock the cases are written against: 2023-11-14.
const NOW_SECS: i64 = 1_700_000_000;

fn rules(path_policy: PathPolicy) -> Rules {
    Rules {
        max_line_bytes: 100,
        max_path_bytes: 20,
        path_policy,
        now_secs: NOW_SECS,
    }
}

/// Checks one line under `sanitize` and the limits above. `expected` is either `!reason` (the [`Invalid`] name) or
/// the forwarded line followed by the names of its notes, all separated by single spaces. A forwarded line equal to
/// the input must come back `AsIs` with nothing written; any other must be written, with its LF, as `Rewritten`.
#[track_caller]
fn check(input: impl AsRef<[u8]>, expected: &str) {
    check_with(&rules(PathPolicy::Sanitize), input, expected);
}

#[track_caller]
fn check_with(rules: &Rules, input: impl AsRef<[u8]>, expected: &str) {
    let input = input.as_ref();
    let mut out = BytesMut::from(&b"previous\n"[..]);
    let actual = check_line(input, rules, &mut out);
    if let Some(reason) = expected.strip_prefix('!') {
        assert_eq!(
            actual.map_err(Invalid::name),
            Err(reason),
            "input {:?}",
            input.escape_ascii().to_string()
        );
        assert_eq!(&out[..], b"previous\n", "out must be untouched on Err");
        return;
    }
    let words: Vec<&str> = expected.split(' ').collect();
    let (line, note_names) = words.split_at(3);
    let line = line.join(" ");
    let expected_notes: Vec<&str> = note_names.to_vec();
    let (notes, written) = match actual {
        Ok(Valid::AsIs(notes)) => (notes, input.to_vec()),
        Ok(Valid::Rewritten(notes)) => {
            assert_eq!(out.last(), Some(&b'\n'), "a rewritten line ends in LF");
            (notes, out[b"previous\n".len()..out.len() - 1].to_vec())
        }
        Err(reason) => panic!(
            "input {:?}: expected {expected:?}, got Err({})",
            input.escape_ascii().to_string(),
            reason.name()
        ),
    };
    assert_eq!(
        String::from_utf8_lossy(&written),
        line,
        "input {:?}",
        input.escape_ascii().to_string()
    );
    let as_is = input == line.as_bytes();
    assert_eq!(
        matches!(actual, Ok(Valid::AsIs(_))),
        as_is,
        "AsIs exactly when the input is already normal"
    );
    if as_is {
        assert_eq!(&out[..], b"previous\n", "out must be untouched for AsIs");
    }
    let actual_notes: Vec<&str> = Note::ALL
        .iter()
        .filter(|note| notes.contains(**note))
        .map(|note| note.name())
        .collect();
    assert_eq!(
        actual_notes,
        expected_notes,
        "notes of {:?}",
        input.escape_ascii().to_string()
    );
}

#[test]
fn normal_lines_are_forwarded_as_is() {
    check("a.b.c 1 1700000000", "a.b.c 1 1700000000");
    check(
        "s.h-1:x#y_z 812.07 1700000120",
        "s.h-1:x#y_z 812.07 1700000120",
    );
}

#[test]
fn whitespace_is_normalised_to_single_spaces() {
    check("a.b 1 1700000000\r", "a.b 1 1700000000");
    check("a.b\t1\t1700000000", "a.b 1 1700000000");
    check("a.b   1  \t 1700000000", "a.b 1 1700000000");
    check("  a.b 1 1700000000", "a.b 1 1700000000");
    check("a.b 1 1700000000  ", "a.b 1 1700000000");
    check("\ta.b 1 1700000000 \t\r", "a.b 1 1700000000");
    check("a.b 1 1700000000\r\r", "a.b 1 1700000000");
}

#[test]
fn a_cr_inside_a_field_is_not_whitespace() {
    check("a.b 1\r 1700000000", "!value");
    check("a.b 1 17000\r00000", "!ts");
    check("a\rb 1 1700000000", "a_b 1 1700000000 sanitized");
}

#[test]
fn lines_without_three_fields_are_refused() {
    check("", "!empty");
    check("   \t ", "!empty");
    check("\r", "!empty");
    check("a.b", "!fields");
    check("a.b 1", "!fields");
    check("a.b 1 1700000000 x", "!fields");
    check("a.b 1 1700000000 1700000000", "!fields");
}

#[test]
fn decimal_values_are_forwarded() {
    check("a 1 1700000000", "a 1 1700000000");
    check("a -1 1700000000", "a -1 1700000000");
    check("a 1.5 1700000000", "a 1.5 1700000000");
    check("a 1. 1700000000", "a 1. 1700000000");
    check("a .5 1700000000", "a .5 1700000000");
    check("a -.5 1700000000", "a -.5 1700000000");
    check("a 1e5 1700000000", "a 1e5 1700000000");
    check("a -1.5E-3 1700000000", "a -1.5E-3 1700000000");
    check("a 1.e+7 1700000000", "a 1.e+7 1700000000");
    check("a 007 1700000000", "a 007 1700000000");
}

#[test]
fn infinities_are_forwarded_and_noted() {
    check("a inf 1700000000", "a inf 1700000000 inf");
    check("a -INF 1700000000", "a -INF 1700000000 inf");
    check("a Infinity 1700000000", "a Infinity 1700000000 inf");
    check("a -iNfInItY 1700000000", "a -iNfInItY 1700000000 inf");
}

#[test]
fn nan_is_refused_on_its_own_reason() {
    check("a nan 1700000000", "!nan");
    check("a NaN 1700000000", "!nan");
    check("a -nan 1700000000", "!nan");
    check("a +NAN 1700000000", "!nan");
}

#[test]
fn values_outside_the_common_float_syntax_are_refused() {
    check("a . 1700000000", "!value");
    check("a - 1700000000", "!value");
    check("a +-1 1700000000", "!value");
    check("a 0x10 1700000000", "!value");
    check("a 0x1p3 1700000000", "!value");
    check("a 1_000 1700000000", "!value");
    check("a 1,5 1700000000", "!value");
    check("a 1e 1700000000", "!value");
    check("a 1e+ 1700000000", "!value");
    check("a e5 1700000000", "!value");
    check("a 1.5.1 1700000000", "!value");
    check("a infin 1700000000", "!value");
    check("a nanx 1700000000", "!value");
    check("a ١٢ 1700000000", "!value");
    check("a １ 1700000000", "!value");
}

#[test]
fn integer_and_decimal_timestamps_are_forwarded() {
    check("a 1 1700000000", "a 1 1700000000");
    check("a 1 1700000000.5", "a 1 1700000000.5");
    check("a 1 1700000000.", "a 1 1700000000.");
    check("a 1 01700000000", "a 1 01700000000");
}

#[test]
fn minus_one_is_the_only_timestamp_below_one_forwarded() {
    check("a 1 -1", "a 1 -1");
    check("a 1 0", "!ts");
    check("a 1 0.0", "!ts");
    check("a 1 000", "!ts");
    check("a 1 -5", "!ts");
    check("a 1 -1.0", "!ts");
    check("a 1 -0", "!ts");
}

#[test]
fn malformed_timestamps_are_refused() {
    check("a 1 .5", "!ts");
    check("a 1 1700000000e0", "!ts");
    check("a 1 17_00000000", "!ts");
    check("a 1 abc", "!ts");
    check("a 1 1.2.3", "!ts");
    check("a 1 ١٧٠٠٠٠٠٠٠٠", "!ts");
}

#[test]
fn timestamps_more_than_a_year_away_are_forwarded_and_noted() {
    check("a 1 1700000000000", "a 1 1700000000000 ts_far");
    check("a 1 1", "a 1 1 ts_far");
    check("a 1 1731536000", "a 1 1731536000");
    check("a 1 1731536001", "a 1 1731536001 ts_far");
    check("a 1 1668464000", "a 1 1668464000");
    check("a 1 1668463999", "a 1 1668463999 ts_far");
    check(
        "a 1 1234567890123456789012345678901234567890",
        "a 1 1234567890123456789012345678901234567890 ts_far",
    );
    check(
        "a 1 99999999999999999999.5",
        "a 1 99999999999999999999.5 ts_far",
    );
    check(
        "a 1 00000000000000000000001700000000",
        "a 1 00000000000000000000001700000000",
    );
}

#[test]
fn nul_and_invalid_utf8_in_a_path_are_refused() {
    check("a\0b 1 1700000000", "!nul");
    check(b"a\xff\0 1 1700000000", "!nul");
    check(b"a\xffb 1 1700000000", "!utf8");
    check(b"a;t=\xff 1 1700000000", "!utf8");
    check("a;t=\0 1 1700000000", "!nul");
}

#[test]
fn bytes_outside_the_alphabet_become_underscores_byte_for_byte() {
    check("é 1 1700000000", "__ 1 1700000000 sanitized");
    check("a.b@c/d 1 1700000000", "a.b_c_d 1 1700000000 sanitized");
    check("a(1) 1 1700000000", "a_1_ 1 1700000000 sanitized");
}

#[test]
fn dots_are_collapsed_and_stripped() {
    check("a..b 1 1700000000", "a.b 1 1700000000 sanitized");
    check(".a.b. 1 1700000000", "a.b 1 1700000000 sanitized");
    check("..a...b.. 1 1700000000", "a.b 1 1700000000 sanitized");
    check("... 1 1700000000", "!path");
    check("; 1 1700000000", "!path");
    check("..;t=v 1 1700000000", "!path");
}

#[test]
fn tags_pass_unchanged_and_only_the_name_is_sanitised() {
    check("a.b;tag=v@1 1 1700000000", "a.b;tag=v@1 1 1700000000");
    check("a.b;t=é;u=. 1 1700000000", "a.b;t=é;u=. 1 1700000000");
    check(
        "a..b@;t=v@ 1 1700000000",
        "a.b_;t=v@ 1 1700000000 sanitized",
    );
    check("a.b;t=v\t1 1700000000", "a.b;t=v 1 1700000000");
}

#[test]
fn the_reject_policy_refuses_bytes_outside_the_alphabet_but_still_collapses_dots() {
    let reject = rules(PathPolicy::Reject);
    check_with(&reject, "a.b 1 1700000000", "a.b 1 1700000000");
    check_with(&reject, "é 1 1700000000", "!path_chars");
    check_with(&reject, "a@b 1 1700000000", "!path_chars");
    check_with(&reject, "a..b 1 1700000000", "a.b 1 1700000000 sanitized");
    check_with(&reject, "a;t=@ 1 1700000000", "a;t=@ 1 1700000000");
    check_with(&reject, b"\xff 1 1700000000", "!utf8");
}

#[test]
fn the_passthrough_policy_keeps_bytes_outside_the_alphabet_but_still_collapses_dots() {
    let passthrough = rules(PathPolicy::Passthrough);
    check_with(&passthrough, "é.x 1 1700000000", "é.x 1 1700000000");
    check_with(
        &passthrough,
        "é..x\t1 1700000000",
        "é.x 1 1700000000 sanitized",
    );
    check_with(&passthrough, "a@b 1  1700000000", "a@b 1 1700000000");
    check_with(&passthrough, "a\0b 1 1700000000", "!nul");
    check_with(&passthrough, b"\xff 1 1700000000", "!utf8");
}

#[test]
fn paths_longer_than_the_limit_are_refused_after_normalising() {
    check(
        "aaaaaaaaaaaaaaaaaaaa 1 1700000000",
        "aaaaaaaaaaaaaaaaaaaa 1 1700000000",
    );
    check("aaaaaaaaaaaaaaaaaaaaa 1 1700000000", "!path_len");
    check(
        "aaaaaaaaaa;t=bbbbbbb 1 1700000000",
        "aaaaaaaaaa;t=bbbbbbb 1 1700000000",
    );
    check("aaaaaaaaaa;t=bbbbbbbb 1 1700000000", "!path_len");
    check("aaaaaaaaaa..aaaaaaaaaa 1 1700000000", "!path_len");
    check(
        "aaaaaaaaa..aaaaaaaaaa 1 1700000000",
        "aaaaaaaaa.aaaaaaaaaa 1 1700000000 sanitized",
    );
    check(
        "ééééééééé.a 1 1700000000",
        "__________________.a 1 1700000000 sanitized",
    );
    check("éééééééééé.a 1 1700000000", "!path_len");
}

#[test]
fn lines_longer_than_the_limit_are_refused_counting_a_trailing_cr() {
    let exactly_max = format!("a {} 1700000000", "1".repeat(100 - 13));
    check(&exactly_max, &exactly_max);
    check(format!("{exactly_max} "), "!line_len");
    check(format!("{exactly_max}\r"), "!line_len");
}

#[test]
fn the_first_broken_rule_is_the_reason() {
    check("a\0b x 1700000000", "!value");
    check("a\0b 1 x", "!ts");
    check("... 1 x", "!ts");
    check("a\0b x", "!fields");
}

#[test]
fn a_leading_plus_on_the_value_or_the_timestamp_is_accepted_and_left_out() {
    check("a.b +1 1700000000", "a.b 1 1700000000");
    check("a.b 1 +1700000000", "a.b 1 1700000000");
    check("a.b +1 +1700000000", "a.b 1 1700000000");
    check("a.b +1.5e+3 1700000000", "a.b 1.5e+3 1700000000");
    check("a.b +.5 1700000000", "a.b .5 1700000000");
    check("a.b +1. 1700000000", "a.b 1. 1700000000");
    check("a.b 1 +1700000000.5", "a.b 1 1700000000.5");
    check("a.b 1 +1700000000.", "a.b 1 1700000000.");
    check("a.b\t+1\t+1700000000\r", "a.b 1 1700000000");
    check("a.b 1 +1", "a.b 1 1 ts_far");
    check("a.b 1 +1700000000000", "a.b 1 1700000000000 ts_far");
    check("a..b +1 +1700000000", "a.b 1 1700000000 sanitized");
}

#[test]
fn a_plus_sign_is_refused_wherever_a_minus_sign_would_be() {
    check("a.b + 1700000000", "!value");
    check("a.b ++1 1700000000", "!value");
    check("a.b +-1 1700000000", "!value");
    check("a.b -+1 1700000000", "!value");
    check("a.b 1+ 1700000000", "!value");
    check("a.b +e5 1700000000", "!value");
    check("a.b 1 +", "!ts");
    check("a.b 1 ++1700000000", "!ts");
    check("a.b 1 +-1", "!ts");
    check("a.b 1 -+1", "!ts");
    check("a.b 1 1700000000+", "!ts");
    check("a.b 1 +.5", "!ts");
    check("a.b 1 +0", "!ts");
    check("a.b 1 +0.0", "!ts");
    check("a.b 1 +inf", "!ts");
    check("a.b 1 +nan", "!ts");
}

#[test]
fn a_plus_sign_on_nan_or_an_infinity_is_treated_as_a_minus_sign_is() {
    check("a.b +nan 1700000000", "!nan");
    check("a.b +NaN 1700000000", "!nan");
    check("a.b +inf 1700000000", "a.b inf 1700000000 inf");
    check("a.b +Infinity 1700000000", "a.b Infinity 1700000000 inf");
    check("a.b -inf 1700000000", "a.b -inf 1700000000 inf");
}

#[test]
fn digits_of_every_length_up_to_nineteen_parse_as_the_standard_parser_does() {
    for digits in [
        "0",
        "7",
        "42",
        "1700000000",
        "123456789012345678",
        "9999999999999999999",
        "1000000000000000000",
    ] {
        assert_eq!(
            parse_digits(digits.as_bytes()),
            digits.parse::<u64>().expect("digits"),
            "{digits}"
        );
    }
    for n_digits in 1..=19 {
        let digits = "9".repeat(n_digits);
        assert_eq!(
            parse_digits(digits.as_bytes()),
            digits.parse::<u64>().expect("digits"),
            "{digits}"
        );
    }
}
