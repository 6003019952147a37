//! Runs the real `polymur` binary and checks its exit codes and messages for `-t`, usage errors and `--help`.

use std::process::Output;

use crate::support::process::{config_file, run_to_exit as polymur};

/// Checks the exit code and that stdout and stderr contain the given texts.
fn check(output: &Output, code: i32, stdout_needle: &str, stderr_needle: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains(stdout_needle), "stdout: {stdout}");
    assert!(stderr.contains(stderr_needle), "stderr: {stderr}");
}

#[test]
fn check_mode_accepts_a_good_config_file() {
    let file = config_file("destinations = [\"10.0.5.20:2003\"]\n[listen]\nport = 2003\n");
    let path = file.path().to_str().unwrap();
    check(&polymur(&["-c", path, "-t"]), 0, "configuration ok", "");
}

#[test]
fn check_mode_accepts_the_example_config_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/polymur.toml");
    check(&polymur(&["-t", "-c", path]), 0, "configuration ok", "");
}

#[test]
fn check_mode_with_an_unknown_key_exits_78_naming_the_key() {
    let file = config_file("[listen]\nprot = 2003\n");
    let path = file.path().to_str().unwrap();
    check(&polymur(&["-c", path, "-t"]), 78, "", "prot");
}

#[test]
fn check_mode_with_an_invalid_value_exits_78_naming_the_key() {
    let file = config_file("[line]\nmax_line_bytes = 10\n");
    let path = file.path().to_str().unwrap();
    check(&polymur(&["-c", path, "-t"]), 78, "", "line.max_line_bytes");
}

#[test]
fn check_mode_with_a_bad_flag_value_exits_78() {
    check(
        &polymur(&["-t", "-destinations=10.0.5.20"]),
        78,
        "",
        "destinations",
    );
}

#[test]
fn a_missing_config_file_exits_78_naming_the_path() {
    check(
        &polymur(&["-t", "-c", "/nonexistent/polymur.toml"]),
        78,
        "",
        "/nonexistent/polymur.toml",
    );
}

#[test]
fn an_unknown_flag_exits_64() {
    check(&polymur(&["-listen-prot=2003"]), 64, "", "--listen-prot");
}

#[test]
fn a_stray_value_after_a_boolean_exits_64() {
    check(&polymur(&["-t", "-console-out", "true"]), 64, "", "'true'");
}

#[test]
fn check_mode_accepts_the_spool_flags() {
    check(
        &polymur(&[
            "-t",
            "-spool-dir",
            "/x",
            "-spool-mode",
            "always",
            "-spool-max-bytes",
            "2GiB",
        ]),
        0,
        "configuration ok",
        "",
    );
    check(
        &polymur(&[
            "-t",
            "--spool-dir=/x",
            "-spool-mode=overflow",
            "-spool-max-bytes=1048576",
        ]),
        0,
        "configuration ok",
        "",
    );
}

#[test]
fn a_bad_spool_mode_exits_64() {
    check(
        &polymur(&["-t", "-spool-dir=/x", "-spool-mode=sometimes"]),
        64,
        "",
        "sometimes",
    );
}

#[test]
fn a_spool_size_that_is_not_a_size_exits_64() {
    check(
        &polymur(&["-t", "-spool-max-bytes=lots"]),
        64,
        "",
        "spool-max-bytes",
    );
}

#[test]
fn a_spool_size_below_the_minimum_exits_78_naming_the_key() {
    check(
        &polymur(&["-t", "-spool-max-bytes=512KiB"]),
        78,
        "",
        "destination.spool_max_bytes",
    );
}

#[test]
fn spool_flags_override_the_file() {
    // The file alone is a config error; the flags replace its bad value before validation.
    let file = config_file(
        "[destination]\nspool_dir = \"/srv/spool\"\nspool_mode = \"always\"\nspool_max_bytes = \"512KiB\"\n",
    );
    let path = file.path().to_str().unwrap();
    check(
        &polymur(&["-c", path, "-t"]),
        78,
        "",
        "destination.spool_max_bytes",
    );
    check(
        &polymur(&[
            "-c",
            path,
            "-t",
            "-spool-dir=/x",
            "-spool-mode=overflow",
            "-spool-max-bytes=2GiB",
        ]),
        0,
        "configuration ok",
        "",
    );
}

#[test]
fn help_exits_0_and_lists_the_seed_flags() {
    let output = polymur(&["--help"]);
    check(&output, 0, "-destinations", "");
    check(&output, 0, "-listen-port", "");
    check(&output, 0, "-console-out", "");
    check(&output, 0, "-spool-dir", "");
    check(&output, 0, "-spool-mode", "");
    check(&output, 0, "-spool-max-bytes", "");
    check(&polymur(&["-help"]), 0, "-destinations", "");
}

#[test]
fn version_exits_0() {
    check(&polymur(&["--version"]), 0, env!("CARGO_PKG_VERSION"), "");
}
