//! The command line: clap definitions, the Go-flag compatibility layer, and flag overrides of the [`Config`].
//!
//! Sits at the process edge, before anything else runs. The seed polymur was written in Go, whose `flag` package
//! spells long flags with one dash (`-listen-port=2003`) and lets a boolean take a value only after `=`
//! (`-console-out=false`). [`parse_args`] rewrites every known single-dash long flag to its `--` form before clap
//! sees it, so `-console-out` is never read as `-c onsole-out`; `-c FILE` and `-t` are the only short flags.
//!
//! The seed's flags are a shorthand for config keys: [`Cli::into_config`] loads the file named by `-c` (or the
//! defaults), applies the flags on top (a flag beats the file), and validates the result, so the rest of the code
//! sees one [`Config`]. Process flags (`-c`, `-t`, the config inspections `-test-routes`, `-ring-dump`,
//! `-ring-diff` of [`inspect`](crate::inspect), and `-import-ccr` of [`import_ccr`](crate::import_ccr)) are not
//! config and are returned as a [`Mode`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{OsStringValueParser, PossibleValuesParser, TypedValueParser as _};
use clap::{ArgGroup, CommandFactory, Parser};
use serde::de::{DeserializeOwned, IntoDeserializer};

use crate::config::{self, Config, LogFormat, OverflowPolicy, SpoolMode};
use crate::inspect::Tool;

/// The parsed command line. Every config flag is an `Option`: `None` leaves the file's (or the default) value.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(
    name = "polymur",
    version,
    about = "A Graphite plaintext relay: receives lines on one port and copies them to every destination",
    after_help = "Long flags also take one dash and Go's forms, as the original polymur: \
                  -listen-port=2003, -listen-port 2003, -console-out, -console-out=false.\n\
                  Flags override the config file; config/polymur.toml documents every key.",
    args_override_self = true,
    group(ArgGroup::new("mode").args(["check", "test_routes", "ring_dump", "ring_diff", "import_ccr"]))
)]
pub struct Cli {
    /// TOML config file; flags override its values.
    #[arg(short = 'c', value_name = "FILE")]
    pub config_path: Option<PathBuf>,

    /// Check the configuration (file and flags), print the result and exit.
    #[arg(short = 't')]
    pub check: bool,

    /// Read lines on stdin and print, per line, its path as sent and where it goes, then exit.
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        value_parser = parse_go_bool
    )]
    pub test_routes: Option<bool>,

    /// Print the ring of hash cluster NAME, one line per entry (position, tab, member), then exit.
    #[arg(long, value_name = "NAME")]
    pub ring_dump: Option<String>,

    /// Read paths on stdin and print, per hash cluster, how many change primary member in OTHER_FILE's config,
    /// then exit.
    #[arg(long, value_name = "OTHER_FILE", value_parser = OsStringValueParser::new().map(PathBuf::from))]
    pub ring_diff: Option<PathBuf>,

    /// Read carbon-c-relay config FILE and print the equivalent polymur config (clusters, routes, rewrites), then
    /// exit.
    #[arg(
        long,
        value_name = "FILE",
        value_parser = OsStringValueParser::new().map(PathBuf::from),
        conflicts_with = "config_path"
    )]
    pub import_ccr: Option<PathBuf>,

    /// Print every relayed line to stdout [config: log.console_out].
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        value_parser = parse_go_bool
    )]
    pub console_out: Option<bool>,

    /// Comma-separated host:port[=instance] destinations; "" for none [config: destinations].
    #[arg(long, value_name = "HOST:PORT,...")]
    pub destinations: Option<String>,

    /// Bind address [default: localhost] [config: listen.address].
    #[arg(long, value_name = "ADDR")]
    pub listen_addr: Option<String>,

    /// Bind port [default: 2005] [config: listen.port].
    #[arg(long, value_name = "PORT")]
    pub listen_port: Option<u16>,

    /// Seconds between sends of the relay's own metrics to the destinations, 0 is off [config: stats.metrics_flush].
    #[arg(long, value_name = "SECONDS")]
    pub metrics_flush: Option<u64>,

    /// Lines a destination's queue may hold [config: destination.queue_capacity_lines].
    #[arg(long, value_name = "LINES")]
    pub queue_cap: Option<usize>,

    /// Bytes a destination's queue may hold, e.g. 64MiB [config: destination.queue_max_bytes].
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub queue_max_bytes: Option<u64>,

    /// What a full destination queue does with new lines [config: destination.overflow].
    #[arg(
        long,
        value_name = "POLICY",
        value_parser = PossibleValuesParser::new(["drop_newest", "drop_oldest", "block"]).try_map(parse_serde_name::<OverflowPolicy>)
    )]
    pub overflow: Option<OverflowPolicy>,

    /// Directory of the disk spool, one subdirectory per destination; "" for none [default: none]
    /// [config: destination.spool_dir].
    #[arg(long, value_name = "DIR", value_parser = OsStringValueParser::new().map(PathBuf::from))]
    pub spool_dir: Option<PathBuf>,

    /// When lines go to the spool: overflow (when memory is full or the destination down) or always
    /// [config: destination.spool_mode].
    #[arg(
        long,
        value_name = "MODE",
        value_parser = PossibleValuesParser::new(["overflow", "always"]).try_map(parse_serde_name::<SpoolMode>)
    )]
    pub spool_mode: Option<SpoolMode>,

    /// Bytes of disk each destination's spool may use, e.g. 2GiB [config: destination.spool_max_bytes].
    #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
    pub spool_max_bytes: Option<u64>,

    /// host:port of the HTTP stats server; "" disables it [default: localhost:2020] [config: stats.address].
    #[arg(long, value_name = "HOST:PORT")]
    pub stats_addr: Option<String>,

    /// Log format on stderr [config: log.format].
    #[arg(
        long,
        value_name = "FORMAT",
        value_parser = PossibleValuesParser::new(["text", "json"]).try_map(parse_serde_name::<LogFormat>)
    )]
    pub log_format: Option<LogFormat>,

    /// Log level filter in RUST_LOG syntax, e.g. info or polymur=debug; RUST_LOG wins if set [config: log.level].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Bound on the whole graceful shutdown, e.g. 10s [config: shutdown_timeout].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
}

/// What the process does with its configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Start the relay.
    Run,
    /// Only check the configuration (`-t`) and exit.
    Check,
    /// Answer a question about the configuration (`-test-routes`, `-ring-dump`, `-ring-diff`) and exit.
    Inspect(Tool),
    /// Translate the carbon-c-relay config at this path (`-import-ccr`), print it and exit.
    ImportCcr(PathBuf),
}

/// Rewrites Go-style single-dash long flags, then parses the command line (the first item is the program name).
///
/// # Errors
///
/// clap's error for an unknown flag, a bad value or a stray argument, and also for `--help` and `--version` (whose
/// "error" is the text to print on stdout; [`clap::Error::use_stderr`] tells them apart).
pub fn parse_args<I>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = OsString>,
{
    let flag_names = flag_names();
    let mut rewritten = Vec::new();
    let mut past_terminator = false;
    for arg in args {
        if past_terminator {
            rewritten.push(arg);
            continue;
        }
        past_terminator = arg == "--";
        rewritten.push(rewrite_go_flag(arg, &flag_names));
    }
    Cli::try_parse_from(rewritten)
}

impl Cli {
    /// Builds the configuration: the file named by `-c` (or the defaults), then the flags, then validation.
    ///
    /// `-ring-diff OTHER_FILE` loads and validates the other file here too, with the same flags, so that a bad
    /// config is reported alike for both.
    ///
    /// # Errors
    ///
    /// The [`config::Error`] of loading a file or of [`Config::validate`].
    pub fn into_config(self) -> Result<(Config, Mode), config::Error> {
        let config = self.load(self.config_path.as_deref())?;
        let mode = if let Some(path) = &self.import_ccr {
            Mode::ImportCcr(path.clone())
        } else if self.check {
            Mode::Check
        } else if self.test_routes == Some(true) {
            Mode::Inspect(Tool::TestRoutes)
        } else if let Some(cluster) = &self.ring_dump {
            Mode::Inspect(Tool::RingDump {
                cluster: cluster.clone(),
            })
        } else if let Some(other_path) = &self.ring_diff {
            let config_name = self.config_path.as_deref().map_or_else(
                || "the config without -c".to_string(),
                |path| path.display().to_string(),
            );
            Mode::Inspect(Tool::RingDiff {
                config_name,
                other_name: other_path.display().to_string(),
                other: Box::new(self.load(Some(other_path))?),
            })
        } else {
            Mode::Run
        };
        Ok((config, mode))
    }

    /// Loads the file at `path` (or the defaults), applies the flags and validates.
    fn load(&self, path: Option<&std::path::Path>) -> Result<Config, config::Error> {
        let mut config = match path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        self.apply_overrides(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Writes every flag that was given into `config`.
    fn apply_overrides(&self, config: &mut Config) {
        if let Some(destinations) = &self.destinations {
            config.destinations = split_destinations(destinations);
        }
        if let Some(address) = &self.listen_addr {
            config.listen.address.clone_from(address);
        }
        if let Some(port) = self.listen_port {
            config.listen.port = port;
        }
        if let Some(seconds) = self.metrics_flush {
            config.stats.metrics_flush = Duration::from_secs(seconds);
        }
        if let Some(n_lines) = self.queue_cap {
            config.destination.queue_capacity_lines = n_lines;
            config
                .destination_keys_from_flags
                .push("queue_capacity_lines");
        }
        if let Some(bytes) = self.queue_max_bytes {
            config.destination.queue_max_bytes = bytes;
            config.destination_keys_from_flags.push("queue_max_bytes");
        }
        if let Some(overflow) = self.overflow {
            config.destination.overflow = overflow;
            config.destination_keys_from_flags.push("overflow");
        }
        if let Some(dir) = &self.spool_dir {
            // As `-destinations=""` and `-stats-addr=""` turn theirs off, `-spool-dir=""` turns off a spool the file
            // sets (the file itself cannot say `""`: that is a config error).
            config.destination.spool_dir = (!dir.as_os_str().is_empty()).then(|| dir.clone());
            config.destination_keys_from_flags.push("spool_dir");
        }
        if let Some(mode) = self.spool_mode {
            config.destination.spool_mode = mode;
            config.destination_keys_from_flags.push("spool_mode");
        }
        if let Some(bytes) = self.spool_max_bytes {
            config.destination.spool_max_bytes = bytes;
            config.destination_keys_from_flags.push("spool_max_bytes");
        }
        if let Some(address) = &self.stats_addr {
            config.stats.address.clone_from(address);
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if let Some(level) = &self.log_level {
            config.log.level.clone_from(level);
        }
        if let Some(console_out) = self.console_out {
            config.log.console_out = console_out;
        }
        if let Some(timeout) = self.shutdown_timeout {
            config.shutdown_timeout = timeout;
        }
    }
}

/// The flag names clap knows, including its own `help`, `version`, `-h` and `-V`.
struct FlagNames {
    long: Vec<String>,
    short: Vec<char>,
}

fn flag_names() -> FlagNames {
    let mut command = Cli::command();
    command.build();
    FlagNames {
        long: command
            .get_arguments()
            .filter_map(|arg| arg.get_long())
            .map(str::to_string)
            .collect(),
        short: command
            .get_arguments()
            .filter_map(|arg| arg.get_short())
            .collect(),
    }
}

/// `-name` or `-name=value` becomes `--name...` when `name` is a known long flag, or when it is an unknown one (so
/// clap names the whole flag in its error instead of its first letter). Short flags, `-cFILE` included, and
/// non-flags are unchanged.
fn rewrite_go_flag(arg: OsString, flag_names: &FlagNames) -> OsString {
    let Some(text) = arg.to_str() else {
        return arg;
    };
    let Some(flag) = text.strip_prefix('-').filter(|rest| !rest.starts_with('-')) else {
        return arg;
    };
    let name = flag.split_once('=').map_or(flag, |(name, _)| name);
    let is_known_long = flag_names.long.iter().any(|long| long == name);
    let starts_with_short = name
        .chars()
        .next()
        .is_some_and(|first| flag_names.short.contains(&first));
    if is_known_long || (name.len() > 1 && !starts_with_short) {
        let mut long_form = OsString::from("-");
        long_form.push(&arg);
        long_form
    } else {
        arg
    }
}

/// Splits the seed's comma-separated destination list; blanks are skipped, so `""` means no destination.
fn split_destinations(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|destination| !destination.is_empty())
        .map(str::to_string)
        .collect()
}

/// A boolean as Go's `strconv.ParseBool` reads it, which is what the seed's `-console-out=VALUE` accepted.
fn parse_go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{text:?} is not a boolean (true or false)")),
    }
}

fn parse_byte_size(text: &str) -> Result<u64, String> {
    config::parse_byte_size(text)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text).map_err(|err| err.to_string())
}

/// Reads an enum value by its serde name, so a flag accepts exactly the spelling of the config key.
fn parse_serde_name<T: DeserializeOwned>(name: String) -> Result<T, String> {
    let deserializer: serde::de::value::StringDeserializer<serde::de::value::Error> =
        name.into_deserializer();
    T::deserialize(deserializer).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn os_args(args: &[&str]) -> Vec<OsString> {
        std::iter::once("polymur")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Parses `args` (without the program name) and builds the config, as `main` does.
    fn config_of(args: &[&str]) -> Result<(Config, Mode), String> {
        let cli = parse_args(os_args(args)).map_err(|err| err.to_string())?;
        cli.into_config().map_err(|err| err.to_string())
    }

    /// Checks that `args` give the default config changed by `expected`, in run mode.
    fn check(args: &[&str], expected: impl FnOnce(&mut Config)) {
        let mut expected_config = Config::default();
        expected(&mut expected_config);
        let (mut config, mode) = config_of(args).unwrap_or_else(|err| panic!("{args:?}: {err}"));
        // Which keys flags set is checked by `flags_win_over_a_clusters_own_settings`.
        config.destination_keys_from_flags.clear();
        assert_eq!(config, expected_config, "{args:?}");
        assert_eq!(mode, Mode::Run, "{args:?}");
    }

    /// Checks that `args` are a usage error whose message contains `needle`.
    fn check_usage_error(args: &[&str], needle: &str) {
        let err = parse_args(os_args(args)).expect_err("expected a usage error");
        assert!(err.use_stderr(), "{args:?}: {err}");
        let message = err.to_string();
        assert!(message.contains(needle), "{args:?}: {message}");
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("create temp file");
        file.write_all(text.as_bytes()).expect("write temp file");
        file
    }

    #[test]
    fn no_flags_give_the_defaults() {
        check(&[], |_| {});
    }

    #[test]
    fn the_seed_example_command_line_parses() {
        // `./polymur -destinations="10.0.5.20:2003,10.0.5.25:2003" -listen-port="2003" -listen-addr="0.0.0.0"
        // -metrics-flush=30`, after the shell removed the quotes.
        check(
            &[
                "-destinations=10.0.5.20:2003,10.0.5.25:2003",
                "-listen-port=2003",
                "-listen-addr=0.0.0.0",
                "-metrics-flush=30",
            ],
            |config| {
                config.destinations = vec!["10.0.5.20:2003".into(), "10.0.5.25:2003".into()];
                config.listen.port = 2003;
                config.listen.address = "0.0.0.0".into();
                config.stats.metrics_flush = Duration::from_secs(30);
            },
        );
    }

    #[test]
    fn values_follow_the_flag_in_every_form() {
        let set_port = |config: &mut Config| config.listen.port = 2003;
        check(&["-listen-port", "2003"], set_port);
        check(&["-listen-port=2003"], set_port);
        check(&["--listen-port", "2003"], set_port);
        check(&["--listen-port=2003"], set_port);
    }

    #[test]
    fn the_last_repeated_flag_wins_as_in_go() {
        check(&["-queue-cap=10", "-queue-cap", "20"], |config| {
            config.destination.queue_capacity_lines = 20;
        });
    }

    #[test]
    fn console_out_is_a_go_boolean() {
        check(&["-console-out"], |config| config.log.console_out = true);
        check(&["--console-out"], |config| config.log.console_out = true);
        check(&["-console-out=true"], |config| {
            config.log.console_out = true
        });
        check(&["-console-out=1"], |config| config.log.console_out = true);
        check(&["-console-out=false"], |_| {});
        check(&["-console-out=F"], |_| {});
        check_usage_error(&["-console-out=yes"], "not a boolean");
    }

    #[test]
    fn console_out_does_not_consume_a_following_true() {
        check_usage_error(&["-console-out", "true"], "'true'");
    }

    #[test]
    fn console_out_is_not_read_as_short_c() {
        let cli = parse_args(os_args(&["-console-out"])).unwrap();
        assert_eq!(cli.config_path, None);
        assert_eq!(cli.console_out, Some(true));
    }

    #[test]
    fn empty_destinations_mean_none() {
        check(&["-destinations="], |_| {});
        check(&["-destinations", " a:1 , ,b:2 "], |config| {
            config.destinations = vec!["a:1".into(), "b:2".into()];
        });
    }

    #[test]
    fn our_flags_set_their_keys() {
        check(
            &[
                "-queue-cap=5000",
                "-queue-max-bytes=8MiB",
                "-overflow=drop_oldest",
                "-stats-addr=",
                "-log-format=json",
                "-log-level=polymur=debug",
                "-shutdown-timeout=1m30s",
            ],
            |config| {
                config.destination.queue_capacity_lines = 5000;
                config.destination.queue_max_bytes = 8 * 1024 * 1024;
                config.destination.overflow = OverflowPolicy::DropOldest;
                config.stats.address = String::new();
                config.log.format = LogFormat::Json;
                config.log.level = "polymur=debug".into();
                config.shutdown_timeout = Duration::from_secs(90);
            },
        );
        check(&["--queue-max-bytes", "65536"], |config| {
            config.destination.queue_max_bytes = 65536;
        });
    }

    #[test]
    fn spool_flags_set_their_keys() {
        check(
            &[
                "-spool-dir",
                "/var/spool/polymur",
                "-spool-mode=always",
                "-spool-max-bytes",
                "2GiB",
            ],
            |config| {
                config.destination.spool_dir = Some(PathBuf::from("/var/spool/polymur"));
                config.destination.spool_mode = SpoolMode::Always;
                config.destination.spool_max_bytes = 2 * 1024 * 1024 * 1024;
            },
        );
        check(&["--spool-mode", "overflow"], |_| {});
        check(&["-spool-max-bytes=1048576"], |config| {
            config.destination.spool_max_bytes = 1024 * 1024;
        });
        check(&["-spool-dir="], |_| {});
    }

    #[test]
    fn spool_flags_override_the_file() {
        let file = config_file(
            "[destination]\nspool_dir = \"/srv/spool\"\nspool_mode = \"always\"\n\
             spool_max_bytes = \"512KiB\"\nspool_overflow = \"drop_newest\"\n",
        );
        let path = file.path().to_str().unwrap();
        // The file's 512KiB alone is a config error; the flag's value replaces it before validation.
        let err = config_of(&["-c", path]).unwrap_err();
        assert!(err.contains("destination.spool_max_bytes"), "{err}");
        let (config, _) = config_of(&[
            "-c",
            path,
            "-spool-dir=/var/spool/polymur",
            "-spool-mode=overflow",
            "-spool-max-bytes=2GiB",
        ])
        .unwrap();
        let destination = &config.destination;
        assert_eq!(
            destination.spool_dir,
            Some(PathBuf::from("/var/spool/polymur"))
        );
        assert_eq!(destination.spool_mode, SpoolMode::Overflow);
        assert_eq!(destination.spool_max_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(
            destination.spool_overflow,
            config::SpoolOverflow::DropNewest,
            "the file's value stays"
        );
        let (config, _) = config_of(&["-c", path, "-spool-dir=", "-spool-max-bytes=1GiB"]).unwrap();
        assert_eq!(
            config.destination.spool_dir, None,
            "an empty flag turns the spool off"
        );
    }

    #[test]
    fn bad_values_are_usage_errors() {
        check_usage_error(&["-listen-port=http"], "listen-port");
        check_usage_error(&["-metrics-flush=-1"], "metrics-flush");
        check_usage_error(&["-overflow=drop_all"], "drop_all");
        check_usage_error(&["-log-format=xml"], "xml");
        check_usage_error(&["-queue-max-bytes=lots"], "queue-max-bytes");
        check_usage_error(&["-shutdown-timeout=soon"], "shutdown-timeout");
        check_usage_error(&["-spool-mode=sometimes"], "sometimes");
        check_usage_error(&["-spool-max-bytes=lots"], "spool-max-bytes");
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        check_usage_error(&["-listen-prot=2003"], "--listen-prot");
        check_usage_error(&["-listen-prot=2003"], "--listen-port");
        check_usage_error(&["--nope"], "nope");
        check_usage_error(&["-x"], "-x");
    }

    #[test]
    fn check_mode_with_a_config_file() {
        let file = config_file("[listen]\nport = 2003\n");
        let path = file.path().to_str().unwrap();
        let (config, mode) = config_of(&["-c", path, "-t"]).unwrap();
        assert_eq!(mode, Mode::Check);
        assert_eq!(config.listen.port, 2003);
        let (_, mode) = config_of(&["-t", &format!("-c{path}")]).unwrap();
        assert_eq!(mode, Mode::Check);
    }

    #[test]
    fn inspection_flags_give_their_mode() {
        let mode_of = |args: &[&str]| config_of(args).map(|(_, mode)| mode);
        assert_eq!(
            mode_of(&["-test-routes"]),
            Ok(Mode::Inspect(Tool::TestRoutes))
        );
        assert_eq!(
            mode_of(&["--test-routes=true"]),
            Ok(Mode::Inspect(Tool::TestRoutes))
        );
        assert_eq!(mode_of(&["-test-routes=false"]), Ok(Mode::Run));
        assert_eq!(
            mode_of(&["-ring-dump", "cache"]),
            Ok(Mode::Inspect(Tool::RingDump {
                cluster: "cache".to_string()
            }))
        );
        check_usage_error(&["-t", "-test-routes"], "cannot be used with");
        check_usage_error(&["-ring-dump=a", "-ring-diff=b"], "cannot be used with");
        check_usage_error(&["-ring-dump"], "ring-dump");
    }

    #[test]
    fn import_ccr_gives_its_mode_and_takes_no_config_file() {
        let mode_of = |args: &[&str]| config_of(args).map(|(_, mode)| mode);
        assert_eq!(
            mode_of(&["-import-ccr", "relay.conf"]),
            Ok(Mode::ImportCcr(PathBuf::from("relay.conf")))
        );
        assert_eq!(
            mode_of(&["-import-ccr=relay.conf"]),
            Ok(Mode::ImportCcr(PathBuf::from("relay.conf")))
        );
        check_usage_error(&["-import-ccr", "a", "-c", "b"], "cannot be used with");
        check_usage_error(&["-import-ccr", "a", "-t"], "cannot be used with");
    }

    #[test]
    fn ring_diff_loads_the_other_file_with_the_same_flags() {
        let file = config_file("[listen]\nport = 2003\n");
        let other = config_file("destinations = [\"a:1\"]\n");
        let (path, other_path) = (
            file.path().to_str().unwrap(),
            other.path().to_str().unwrap(),
        );
        let (config, mode) =
            config_of(&["-c", path, "-ring-diff", other_path, "-listen-port=2004"]).unwrap();
        assert_eq!(config.listen.port, 2004);
        let Mode::Inspect(Tool::RingDiff {
            config_name,
            other_name,
            other: other_config,
        }) = mode
        else {
            panic!("not -ring-diff: {mode:?}");
        };
        assert_eq!(
            (config_name.as_str(), other_name.as_str()),
            (path, other_path)
        );
        assert_eq!(other_config.destinations, vec!["a:1".to_string()]);
        assert_eq!(other_config.listen.port, 2004, "flags apply to both files");
        let bad = config_file("[listen]\nprot = 2003\n");
        let err = config_of(&["-c", path, "-ring-diff", bad.path().to_str().unwrap()]).unwrap_err();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn flags_win_over_a_clusters_own_settings() {
        let file = config_file(
            "[[cluster]]\nname = \"c\"\nmethod = \"forward\"\nmembers = [\"a:1\"]\n\
             queue_max_bytes = \"32MiB\"\nspool_mode = \"always\"\n",
        );
        let path = file.path().to_str().unwrap();
        let (config, _) = config_of(&["-c", path, "-queue-max-bytes", "2MiB"]).unwrap();
        let plans = config.destination_plans().unwrap();
        assert_eq!(plans[0].config.queue_max_bytes, 2 * 1024 * 1024);
        assert_eq!(plans[0].config.spool_mode, SpoolMode::Always);
        let (config, _) = config_of(&["-c", path]).unwrap();
        let plans = config.destination_plans().unwrap();
        assert_eq!(plans[0].config.queue_max_bytes, 32 * 1024 * 1024);
    }

    #[test]
    fn flags_override_the_file() {
        let file = config_file(
            "destinations = [\"a:2003\"]\n[listen]\naddress = \"0.0.0.0\"\nport = 2003\n\
             [log]\nconsole_out = true\n",
        );
        let path = file.path().to_str().unwrap();
        let (config, _) = config_of(&[
            "-c",
            path,
            "-listen-port=2004",
            "-destinations=b:2003",
            "-console-out=false",
        ])
        .unwrap();
        assert_eq!(config.destinations, vec!["b:2003".to_string()]);
        assert_eq!(config.listen.address, "0.0.0.0", "the file's value stays");
        assert_eq!(config.listen.port, 2004);
        assert!(!config.log.console_out);
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = config_of(&["-destinations=10.0.5.20"]).unwrap_err();
        assert!(err.contains("destinations"), "{err}");
        let err = config_of(&["-spool-max-bytes=512KiB"]).unwrap_err();
        assert!(err.contains("destination.spool_max_bytes"), "{err}");
        let err = config_of(&["-log-level=[[["]).unwrap_err();
        assert!(err.contains("log.level"), "{err}");
        let err = config_of(&["-c", "/nonexistent/polymur.toml"]).unwrap_err();
        assert!(err.contains("/nonexistent/polymur.toml"), "{err}");
    }

    #[test]
    fn help_and_version_are_not_usage_errors() {
        for flag in ["--help", "-help", "-h", "--version", "-version", "-V"] {
            let err = parse_args(os_args(&[flag])).unwrap_err();
            assert!(!err.use_stderr(), "{flag}: {err}");
        }
    }

    #[test]
    fn arguments_after_the_terminator_are_not_rewritten() {
        check_usage_error(&["--", "-listen-port=2003"], "-listen-port=2003");
    }
}
