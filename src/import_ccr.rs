//! `-import-ccr FILE`: reads a carbon-c-relay config and writes the polymur config that routes alike.
//!
//! Not part of the pipeline: a one-shot translation at the process edge, like [`inspect`](crate::inspect). It
//! imports the common subset, `cluster`, `match` and `rewrite`, and refuses the rest with an [`Error`] naming the
//! line and the construct, so that an imported config never routes differently without saying so. `listen` and
//! `statistics` (and `send statistics to`) configure carbon-c-relay's own process, which polymur configures in
//! `[listen]` and `[stats]`: they are skipped with a note instead.
//!
//! The lexer follows carbon-c-relay 3.7's `conffile.l`: `#` starts a comment anywhere outside a quoted string; a
//! statement ends at `;` and may span lines; a word is a run of its identifier characters (with `\ ` for a space);
//! `"..."` quotes a word, with `\x` standing for `x`. Its regexes are POSIX extended ones, compiled by glibc; they
//! are rewritten into Rust `regex` syntax where the two differ and refused where no equivalent exists
//! ([`posix_to_rust_regex`]).
//!
//! Hash clusters get `flavour = "carbon-c-relay"`, so their rings are carbon-c-relay's, bit for bit. Invariant: the
//! output is checked with [`Config::validate`] before it is returned.

use std::fmt::Write as _;

use crate::config::Config;
use crate::config::{ClusterMethod, BLACKHOLE};

/// carbon-c-relay's port for a member written without one.
pub const DEFAULT_PORT: u16 = 2003;

/// Why a carbon-c-relay config was not imported.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A statement polymur cannot express, or a syntax error, at a line of the file (1-based).
    #[error("line {line}: {message}")]
    Refused {
        /// The line where the statement (or the bad token) starts.
        line: usize,
        /// What is refused, and why.
        message: String,
    },
    /// The translation does not pass polymur's own validation.
    #[error("the imported config is not valid: {0}")]
    Invalid(String),
}

/// A translated config: the TOML text, and the statements skipped on purpose (one note each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The polymur config, starting with one `# not imported: ...` comment per skipped statement.
    pub toml: String,
    /// The skipped statements, as `line N: ...`, for stderr.
    pub notes: Vec<String>,
}

/// Reads the carbon-c-relay config at `path` and translates it, as [`import`].
///
/// # Errors
///
/// [`Error::Read`] if the file cannot be read, else as [`import`].
pub fn import_file(path: &std::path::Path) -> Result<Imported, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    import(&text)
}

/// Translates the text of a carbon-c-relay config into a polymur config.
///
/// # Errors
///
/// [`Error::Refused`] for a syntax error or a construct polymur cannot express; [`Error::Invalid`] if the result
/// does not validate (a member polymur's identities reject, say).
pub fn import(text: &str) -> Result<Imported, Error> {
    let tokens = lex(text)?;
    let mut translation = Translation::default();
    for statement in split_statements(&tokens)? {
        translation.statement(&statement)?;
    }
    let toml = translation.render();
    let config = Config::parse(&toml).map_err(Error::Invalid)?;
    config
        .validate()
        .map_err(|err| Error::Invalid(err.to_string()))?;
    Ok(Imported {
        toml,
        notes: translation.notes,
    })
}

/// Rewrites a POSIX extended regex (as glibc's `regcomp` reads it) into Rust `regex` syntax with the same matches.
///
/// Bracket expressions take a backslash literally in POSIX, so `[\.]` becomes `[\\.]`; `\w`, `\W`, `\s` and `\S`
/// become their ASCII classes; `{,n}` becomes `{0,n}`; any other escaped punctuation is the character itself.
///
/// # Errors
///
/// A message for what has no Rust equivalent or differs in meaning: backreferences (`\1`), the GNU anchors `\b`,
/// `\B`, `\<`, `\>`, `` \` `` and `\'`, an escaped letter that is a plain letter in POSIX but a class in Rust
/// (`\d`), a repeated repetition (`a*?`: greedy in POSIX, lazy in Rust), collating elements (`[[.a.]]`, `[[=a=]]`),
/// a `{` that opens no interval, and anything else Rust's parser then rejects.
pub fn posix_to_rust_regex(pattern: &str) -> Result<String, String> {
    let characters: Vec<char> = pattern.chars().collect();
    let mut rust = String::with_capacity(pattern.len() + 8);
    // Whether the last item can take a repetition, and whether it already is one.
    let mut can_repeat = false;
    let mut is_repetition = false;
    let mut index = 0;
    while index < characters.len() {
        let character = characters[index];
        index += 1;
        let mut repetition = false;
        match character {
            '\\' => {
                let Some(&escaped) = characters.get(index) else {
                    return Err("a trailing backslash".to_string());
                };
                index += 1;
                match escaped {
                    'w' => rust.push_str("[_[:alnum:]]"),
                    'W' => rust.push_str("[^_[:alnum:]]"),
                    's' => rust.push_str("[[:space:]]"),
                    'S' => rust.push_str("[^[:space:]]"),
                    '1'..='9' => {
                        return Err(format!(
                            "the backreference \\{escaped}: Rust regexes have none"
                        ))
                    }
                    'b' | 'B' | '<' | '>' | '`' | '\'' => {
                        return Err(format!(
                            "the GNU anchor \\{escaped}: write the boundary out with classes"
                        ))
                    }
                    letter if letter.is_ascii_alphanumeric() => {
                        return Err(format!(
                            "\\{letter} is a plain {letter:?} in POSIX but an escape in Rust: write {letter} or a \
                             bracket expression"
                        ))
                    }
                    literal => push_literal(&mut rust, literal),
                }
                can_repeat = true;
            }
            '[' => {
                index = bracket_expression(&characters, index, &mut rust)?;
                can_repeat = true;
            }
            '*' | '+' | '?' | '{' => {
                if is_repetition {
                    return Err(format!(
                        "a repeated repetition ({character} after a repetition): greedy in POSIX, lazy or an \
                         error in Rust"
                    ));
                }
                if !can_repeat {
                    return Err(format!("{character} repeats nothing"));
                }
                if character == '{' {
                    index = interval(&characters, index, &mut rust)?;
                } else {
                    rust.push(character);
                }
                repetition = true;
            }
            '(' => {
                rust.push('(');
                can_repeat = false;
            }
            '|' => {
                rust.push('|');
                can_repeat = false;
            }
            ')' | '.' | '$' => {
                rust.push(character);
                can_repeat = true;
            }
            '^' => {
                rust.push('^');
                can_repeat = false;
            }
            literal => {
                push_literal(&mut rust, literal);
                can_repeat = true;
            }
        }
        is_repetition = repetition;
    }
    regex::bytes::Regex::new(&rust).map_err(|err| err.to_string())?;
    Ok(rust)
}

/// Translates a carbon-c-relay replacement: `\N` and `\g{N}` are group N, any other text is literal.
///
/// The result is written as polymur's `replace` accepts it: `\N` for a one-digit group not followed by a digit,
/// `${N}` otherwise, and `$$` for a literal `$`.
///
/// # Errors
///
/// A message for the case and dot modifiers (`\_1`, `\^1`, `\.1`), which polymur's `replace` lacks, for any other
/// escape, and for a backslash in the replacement of a regex without groups (carbon-c-relay copies it verbatim).
pub fn ccr_to_polymur_replacement(replacement: &str, n_groups: usize) -> Result<String, String> {
    if n_groups == 0 {
        if replacement.contains('\\') {
            return Err(
                "a backslash in the replacement of a regex without groups, which carbon-c-relay copies as is"
                    .to_string(),
            );
        }
        return Ok(replacement.replace('$', "$$"));
    }
    let characters: Vec<char> = replacement.chars().collect();
    let mut template = String::with_capacity(replacement.len() + 4);
    let mut index = 0;
    while index < characters.len() {
        let character = characters[index];
        index += 1;
        if character == '$' {
            template.push_str("$$");
            continue;
        }
        if character != '\\' {
            template.push(character);
            continue;
        }
        let digits_from = |start: usize| {
            characters[start..]
                .iter()
                .take_while(|digit| digit.is_ascii_digit())
                .collect::<String>()
        };
        let group = match characters.get(index) {
            Some('0'..='9') => {
                let digits = digits_from(index);
                index += digits.len();
                digits
            }
            Some('g') => {
                let braced = characters.get(index + 1) == Some(&'{');
                let start = index + 1 + usize::from(braced);
                let digits = digits_from(start);
                let end = start + digits.len();
                if digits.is_empty() || (braced && characters.get(end) != Some(&'}')) {
                    return Err("\\g must be followed by a group number, or one in braces".to_string());
                }
                index = end + usize::from(braced);
                digits
            }
            Some(modifier @ ('_' | '^' | '.')) => {
                return Err(format!(
                    "the modifier \\{modifier} (lower case, upper case, dots to underscores): polymur's replace \
                     has none"
                ))
            }
            Some(other) => return Err(format!("the escape \\{other}")),
            None => return Err("a trailing backslash".to_string()),
        };
        let number: usize = group
            .parse()
            .map_err(|_| format!("group \\{group} is too large"))?;
        let next_is_digit = characters.get(index).is_some_and(char::is_ascii_digit);
        if (1..=9).contains(&number) && !next_is_digit {
            let _ = write!(template, "\\{number}");
        } else {
            let _ = write!(template, "${{{number}}}");
        }
    }
    Ok(template)
}

/// One token of the config: a word (quoted or not), `=` or `;`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word { text: String, quoted: bool },
    Equals,
    End,
}

/// A token and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    token: Token,
    line: usize,
}

/// The characters of an unquoted word, as carbon-c-relay's `IDCHR`.
fn is_word_character(character: char) -> bool {
    character.is_ascii_alphanumeric() || "[](){}|\\^?*$&%<>:/,._+-".contains(character)
}

fn lex(text: &str) -> Result<Vec<Located>, Error> {
    let characters: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut index = 0;
    while index < characters.len() {
        let character = characters[index];
        match character {
            '\n' => {
                line += 1;
                index += 1;
            }
            ' ' | '\t' | '\r' => index += 1,
            '#' => {
                while index < characters.len() && characters[index] != '\n' {
                    index += 1;
                }
            }
            ';' => {
                tokens.push(Located {
                    token: Token::End,
                    line,
                });
                index += 1;
            }
            '=' => {
                tokens.push(Located {
                    token: Token::Equals,
                    line,
                });
                index += 1;
            }
            '"' => {
                let mut word = String::new();
                index += 1;
                loop {
                    match characters.get(index) {
                        None | Some('\n') => {
                            return Err(Error::Refused {
                                line,
                                message: "unterminated string".to_string(),
                            })
                        }
                        Some('"') => break,
                        Some('\\')
                            if index + 1 < characters.len() && characters[index + 1] != '\n' =>
                        {
                            word.push(characters[index + 1]);
                            index += 2;
                        }
                        Some(&other) => {
                            word.push(other);
                            index += 1;
                        }
                    }
                }
                index += 1;
                if word.is_empty() {
                    return Err(Error::Refused {
                        line,
                        message: "empty string".to_string(),
                    });
                }
                tokens.push(Located {
                    token: Token::Word {
                        text: word,
                        quoted: true,
                    },
                    line,
                });
            }
            word_start if is_word_character(word_start) => {
                let mut word = String::new();
                while let Some(&next) = characters.get(index) {
                    if is_word_character(next) {
                        word.push(next);
                        index += 1;
                    } else if next == ' '
                        && word.ends_with('\\')
                        && characters
                            .get(index + 1)
                            .copied()
                            .is_some_and(is_word_character)
                    {
                        // `\ ` keeps a space inside a word; the backslash stays, as in carbon-c-relay.
                        word.push(' ');
                        index += 1;
                    } else {
                        break;
                    }
                }
                tokens.push(Located {
                    token: Token::Word {
                        text: word,
                        quoted: false,
                    },
                    line,
                });
            }
            unexpected => {
                return Err(Error::Refused {
                    line,
                    message: format!(
                        "unexpected character {unexpected:?} (quote the word that holds it)"
                    ),
                })
            }
        }
    }
    Ok(tokens)
}

/// A statement: its tokens without the final `;`, and its first line.
struct Statement<'a> {
    tokens: &'a [Located],
    line: usize,
}

fn split_statements(tokens: &[Located]) -> Result<Vec<Statement<'_>>, Error> {
    let mut statements = Vec::new();
    let mut start = 0;
    for (index, located) in tokens.iter().enumerate() {
        if located.token == Token::End {
            let statement_tokens = &tokens[start..index];
            let Some(first) = statement_tokens.first() else {
                return Err(Error::Refused {
                    line: located.line,
                    message: "an empty statement".to_string(),
                });
            };
            statements.push(Statement {
                tokens: statement_tokens,
                line: first.line,
            });
            start = index + 1;
        }
    }
    if let Some(unterminated) = tokens.get(start) {
        return Err(Error::Refused {
            line: unterminated.line,
            message: "a statement without its closing ';'".to_string(),
        });
    }
    Ok(statements)
}

/// The clusters, routes and rewrites translated so far, each with the line it came from.
#[derive(Default)]
struct Translation {
    clusters: Vec<(usize, Cluster)>,
    routes: Vec<(usize, Route)>,
    rewrites: Vec<(usize, Rewrite)>,
    notes: Vec<String>,
}

struct Cluster {
    name: String,
    method: ClusterMethod,
    replication: usize,
    dynamic: bool,
    members: Vec<String>,
}

struct Route {
    pattern: Option<String>,
    send_to: Vec<String>,
    stop: bool,
}

struct Rewrite {
    pattern: String,
    replace: String,
}

/// Reads a statement's tokens front to back, with errors that name the statement's line.
struct Cursor<'a> {
    tokens: &'a [Located],
    index: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn refuse(&self, message: impl Into<String>) -> Error {
        let line = self
            .tokens
            .get(self.index.saturating_sub(1))
            .map_or(self.line, |located| located.line);
        Error::Refused {
            line,
            message: message.into(),
        }
    }

    /// The next token, if it is an unquoted word equal to `keyword`, consumed.
    fn keyword(&mut self, keyword: &str) -> bool {
        let is_keyword = matches!(
            self.tokens.get(self.index),
            Some(Located { token: Token::Word { text, quoted: false }, .. }) if text == keyword
        );
        if is_keyword {
            self.index += 1;
        }
        is_keyword
    }

    fn peek_word(&self) -> Option<(&'a str, bool)> {
        match self.tokens.get(self.index) {
            Some(Located {
                token: Token::Word { text, quoted },
                ..
            }) => Some((text.as_str(), *quoted)),
            _ => None,
        }
    }

    fn word(&mut self, what: &str) -> Result<&'a str, Error> {
        match self.peek_word() {
            Some((text, _)) => {
                self.index += 1;
                Ok(text)
            }
            None => {
                self.index += 1;
                Err(self.refuse(format!("expected {what}")))
            }
        }
    }

    fn is_done(&self) -> bool {
        self.index >= self.tokens.len()
    }

    fn expect_done(&mut self, statement: &str) -> Result<(), Error> {
        match self.tokens.get(self.index) {
            None => Ok(()),
            Some(located) => {
                let shown = match &located.token {
                    Token::Word { text, .. } => text.clone(),
                    Token::Equals => "=".to_string(),
                    Token::End => ";".to_string(),
                };
                self.index += 1;
                Err(self.refuse(format!("{statement}: unexpected {shown:?}")))
            }
        }
    }
}

impl Translation {
    fn statement(&mut self, statement: &Statement<'_>) -> Result<(), Error> {
        let mut cursor = Cursor {
            tokens: statement.tokens,
            index: 0,
            line: statement.line,
        };
        let line = statement.line;
        let keyword = cursor.word("a statement")?;
        match keyword {
            "cluster" => self.cluster(&mut cursor),
            "match" => self.route(&mut cursor),
            "rewrite" => self.rewrite(&mut cursor),
            "listen" | "statistics" => {
                self.notes.push(format!(
                    "line {line}: {keyword} (configure polymur's {} instead)",
                    if keyword == "listen" {
                        "[listen]"
                    } else {
                        "[stats]"
                    }
                ));
                Ok(())
            }
            "send" if cursor.keyword("statistics") => {
                self.notes.push(format!(
                    "line {line}: send statistics to (polymur routes its own metrics like any line)"
                ));
                Ok(())
            }
            "aggregate" => Err(cursor.refuse("aggregate: polymur does not aggregate")),
            "include" => Err(cursor
                .refuse("include: import the included files' statements into this file first")),
            other => Err(cursor.refuse(format!("unknown statement {other:?}"))),
        }
    }

    fn cluster(&mut self, cursor: &mut Cursor<'_>) -> Result<(), Error> {
        let name = cursor.word("a cluster name")?.to_string();
        if name == BLACKHOLE {
            return Err(cursor.refuse("cluster blackhole: the name is reserved"));
        }
        if self
            .clusters
            .iter()
            .any(|(_, cluster)| cluster.name == name)
        {
            return Err(cursor.refuse(format!("cluster {name}: defined twice")));
        }
        let method = match cursor.word("a cluster type")? {
            "forward" => ClusterMethod::Forward,
            "any_of" => ClusterMethod::AnyOf,
            "failover" => ClusterMethod::Failover,
            "carbon_ch" => ClusterMethod::CarbonCh,
            "fnv1a_ch" => ClusterMethod::Fnv1aCh,
            "jump_fnv1a_ch" => ClusterMethod::JumpFnv1aCh,
            "file" => {
                return Err(cursor.refuse(format!(
                    "cluster {name}: file clusters: polymur sends to TCP destinations only"
                )))
            }
            other => {
                return Err(cursor.refuse(format!("cluster {name}: unknown cluster type {other:?}")))
            }
        };
        let mut replication = 1;
        let mut dynamic = false;
        if method.is_hash() {
            if cursor.keyword("replication") {
                let count = cursor.word("a replication count")?;
                replication = count
                    .parse::<usize>()
                    .ok()
                    .filter(|count| (1..=255).contains(count))
                    .ok_or_else(|| {
                        cursor.refuse(format!(
                            "cluster {name}: replication {count:?} is not a count in 1..=255"
                        ))
                    })?;
            }
            dynamic = cursor.keyword("dynamic");
        } else if cursor.keyword("useall") {
            return Err(cursor.refuse(format!(
                "cluster {name}: useall (one member per address a host name resolves to): list the addresses"
            )));
        }
        let mut members = Vec::new();
        while !cursor.is_done() {
            members.push(self.member(cursor, &name)?);
        }
        if members.is_empty() {
            return Err(cursor.refuse(format!("cluster {name}: no members")));
        }
        self.clusters.push((
            cursor.line,
            Cluster {
                name,
                method,
                replication,
                dynamic,
                members,
            },
        ));
        Ok(())
    }

    /// One `host[:port][=instance] [proto tcp] [type linemode] [transport plain]`.
    fn member(&self, cursor: &mut Cursor<'_>, cluster: &str) -> Result<String, Error> {
        let address = cursor.word("a member")?;
        let mut member = with_port(address).map_err(|message| {
            cursor.refuse(format!("cluster {cluster}: member {address:?}: {message}"))
        })?;
        if cursor
            .tokens
            .get(cursor.index)
            .map(|located| &located.token)
            == Some(&Token::Equals)
        {
            cursor.index += 1;
            let instance = cursor.word("an instance after '='")?;
            member.push('=');
            member.push_str(instance);
        }
        loop {
            if cursor.keyword("proto") {
                if !cursor.keyword("tcp") {
                    return Err(cursor.refuse(format!(
                        "cluster {cluster}: member {address}: proto udp: polymur sends over TCP only"
                    )));
                }
            } else if cursor.keyword("type") {
                if !cursor.keyword("linemode") {
                    return Err(cursor.refuse(format!(
                        "cluster {cluster}: member {address}: only type linemode"
                    )));
                }
            } else if cursor.keyword("transport") {
                if !cursor.keyword("plain") {
                    return Err(cursor.refuse(format!(
                        "cluster {cluster}: member {address}: compressed transports: polymur sends plain text \
                         only"
                    )));
                }
                if cursor.keyword("ssl") || cursor.keyword("mtls") {
                    return Err(cursor.refuse(format!(
                        "cluster {cluster}: member {address}: ssl: polymur has no TLS"
                    )));
                }
            } else {
                return Ok(member);
            }
        }
    }

    fn route(&mut self, cursor: &mut Cursor<'_>) -> Result<(), Error> {
        let mut patterns = Vec::new();
        while let Some((text, quoted)) = cursor.peek_word() {
            if !quoted && matches!(text, "validate" | "route" | "send") {
                break;
            }
            cursor.index += 1;
            if text == "*" && !quoted {
                patterns.push(None);
            } else {
                let pattern = posix_to_rust_regex(text)
                    .map_err(|message| cursor.refuse(format!("match {text}: {message}")))?;
                patterns.push(Some(pattern));
            }
        }
        if patterns.is_empty() {
            return Err(cursor.refuse("match: no expression"));
        }
        if patterns.len() > 1 && patterns.contains(&None) {
            return Err(cursor.refuse("match: * must be the only expression"));
        }
        if cursor.keyword("validate") {
            return Err(
                cursor.refuse("match ... validate: polymur does not check what follows the path")
            );
        }
        if cursor.keyword("route") {
            return Err(cursor.refuse("match ... route using: polymur hashes the path as it is"));
        }
        if !(cursor.keyword("send") && cursor.keyword("to")) {
            return Err(cursor.refuse("match: expected send to"));
        }
        let mut send_to = Vec::new();
        let mut blackhole = false;
        while let Some((text, quoted)) = cursor.peek_word() {
            if !quoted && text == "stop" {
                break;
            }
            cursor.index += 1;
            if !quoted && text == BLACKHOLE {
                blackhole = true;
                send_to.push(BLACKHOLE.to_string());
            } else if self
                .clusters
                .iter()
                .any(|(_, cluster)| cluster.name == text)
            {
                send_to.push(text.to_string());
            } else {
                return Err(cursor.refuse(format!("match ... send to {text}: unknown cluster")));
            }
        }
        if send_to.is_empty() {
            return Err(cursor.refuse("match ... send to: no cluster"));
        }
        if blackhole && send_to.len() > 1 {
            return Err(cursor.refuse("match ... send to blackhole: blackhole must be alone"));
        }
        // carbon-c-relay: a match that sends to blackhole stops, with or without `stop`.
        let stop = cursor.keyword("stop") || blackhole;
        cursor.expect_done("match")?;
        // One route per expression, as carbon-c-relay adds one per expression.
        for pattern in patterns {
            self.routes.push((
                cursor.line,
                Route {
                    pattern,
                    send_to: send_to.clone(),
                    stop,
                },
            ));
        }
        Ok(())
    }

    fn rewrite(&mut self, cursor: &mut Cursor<'_>) -> Result<(), Error> {
        if let Some((match_line, _)) = self.routes.first() {
            return Err(cursor.refuse(format!(
                "rewrite after the match of line {match_line}: carbon-c-relay rewrites where the statement stands, \
                 polymur before every route; move the rewrite above the first match if that is what you mean"
            )));
        }
        let expression = cursor.word("a regex")?;
        let pattern = posix_to_rust_regex(expression)
            .map_err(|message| cursor.refuse(format!("rewrite {expression}: {message}")))?;
        if !cursor.keyword("into") {
            return Err(cursor.refuse("rewrite: expected into"));
        }
        let replacement = cursor.word("a replacement")?;
        let n_groups = regex::bytes::Regex::new(&pattern)
            .map(|compiled| compiled.captures_len() - 1)
            .map_err(|err| cursor.refuse(err.to_string()))?;
        let replace = ccr_to_polymur_replacement(replacement, n_groups).map_err(|message| {
            cursor.refuse(format!("rewrite ... into {replacement}: {message}"))
        })?;
        cursor.expect_done("rewrite")?;
        self.rewrites
            .push((cursor.line, Rewrite { pattern, replace }));
        Ok(())
    }

    fn render(&self) -> String {
        let mut toml = String::new();
        toml.push_str("# Imported from a carbon-c-relay config by polymur -import-ccr; \"line N\" is its line.\n");
        for note in &self.notes {
            let _ = writeln!(toml, "# not imported: {note}");
        }
        for (line, cluster) in &self.clusters {
            let _ = write!(
                toml,
                "\n# line {line}\n[[cluster]]\nname = {}\nmethod = {}\n",
                quote(&cluster.name),
                quote(cluster.method.name())
            );
            if cluster.method.is_hash() {
                let _ = writeln!(toml, "flavour = \"carbon-c-relay\"");
                let _ = writeln!(toml, "replication = {}", cluster.replication);
                if cluster.dynamic {
                    let _ = writeln!(toml, "dynamic = true");
                }
            }
            let members: Vec<String> = cluster.members.iter().map(|member| quote(member)).collect();
            let _ = writeln!(toml, "members = [{}]", members.join(", "));
        }
        for (line, rewrite) in &self.rewrites {
            let _ = write!(
                toml,
                "\n# line {line}\n[[rewrite]]\nmatch = {}\nreplace = {}\n",
                quote(&rewrite.pattern),
                quote(&rewrite.replace)
            );
        }
        for (line, route) in &self.routes {
            let _ = write!(toml, "\n# line {line}\n[[route]]\n");
            if let Some(pattern) = &route.pattern {
                let _ = writeln!(toml, "match = {}", quote(pattern));
            }
            let send_to: Vec<String> = route.send_to.iter().map(|target| quote(target)).collect();
            let _ = writeln!(toml, "send_to = [{}]", send_to.join(", "));
            if route.stop {
                let _ = writeln!(toml, "stop = true");
            }
        }
        toml
    }
}

/// A TOML string for `text`.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// `host[:port]` or `[v6][:port]` as `host:port`, with carbon-c-relay's default port.
fn with_port(address: &str) -> Result<String, String> {
    if let Some(bracketed) = address.strip_prefix('[') {
        let Some((host, rest)) = bracketed.split_once(']') else {
            return Err("no ']' after the IPv6 address".to_string());
        };
        return match rest {
            "" => Ok(format!("[{host}]:{DEFAULT_PORT}")),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok(format!("[{host}]:{}", parse_port(port)?)),
                None => Err("expected :port after ']'".to_string()),
            },
        };
    }
    match address.split(':').count() {
        1 => Ok(format!("{address}:{DEFAULT_PORT}")),
        2 => {
            let (host, port) = address.split_once(':').unwrap_or((address, ""));
            Ok(format!("{host}:{}", parse_port(port)?))
        }
        _ => Err("an IPv6 address needs brackets, [::1]:2003".to_string()),
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    port.parse::<u16>()
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| format!("port {port:?} is not in 1..=65535"))
}

/// Appends `literal` so that it matches itself outside a bracket expression.
fn push_literal(rust: &mut String, literal: char) {
    if "\\.+*?()|[]{}^$#&-~".contains(literal) {
        rust.push('\\');
    }
    rust.push(literal);
}

/// Appends `literal` so that it matches itself inside a Rust bracket expression.
fn push_class_literal(rust: &mut String, literal: char) {
    if "\\[]^-&~".contains(literal) {
        rust.push('\\');
    }
    rust.push(literal);
}

/// The POSIX character classes, which Rust also has with the same (ASCII) meaning.
const POSIX_CLASSES: [&str; 12] = [
    "alnum", "alpha", "blank", "cntrl", "digit", "graph", "lower", "print", "punct", "space",
    "upper", "xdigit",
];

/// Translates the bracket expression after its `[` at `start`; returns the index after its `]`.
fn bracket_expression(
    characters: &[char],
    start: usize,
    rust: &mut String,
) -> Result<usize, String> {
    let unterminated = || "a bracket expression without its ']'".to_string();
    let mut index = start;
    rust.push('[');
    if characters.get(index) == Some(&'^') {
        rust.push('^');
        index += 1;
    }
    let mut first = true;
    loop {
        let Some(&character) = characters.get(index) else {
            return Err(unterminated());
        };
        if character == ']' && !first {
            rust.push(']');
            return Ok(index + 1);
        }
        first = false;
        if character == '[' {
            match characters.get(index + 1) {
                Some(':') => {
                    let rest: String = characters[index + 2..].iter().collect();
                    let Some(end) = rest.find(":]") else {
                        return Err(unterminated());
                    };
                    let name = &rest[..end];
                    if !POSIX_CLASSES.contains(&name) {
                        return Err(format!("the character class [:{name}:]"));
                    }
                    let _ = write!(rust, "[:{name}:]");
                    index += 2 + name.chars().count() + 2;
                    continue;
                }
                Some(kind @ ('.' | '=')) => {
                    return Err(format!(
                        "collating elements ([{kind}...{kind}]) in a bracket expression"
                    ))
                }
                _ => {}
            }
        }
        // A range `a-z`, unless the `-` is last.
        if characters.get(index + 1) == Some(&'-')
            && characters.get(index + 2).is_some_and(|&end| end != ']')
        {
            let end = characters[index + 2];
            if end == '[' {
                return Err("a range that ends in a bracketed element".to_string());
            }
            push_class_literal(rust, character);
            rust.push('-');
            push_class_literal(rust, end);
            index += 3;
        } else {
            push_class_literal(rust, character);
            index += 1;
        }
    }
}

/// Translates the interval after its `{` at `start`; returns the index after its `}`.
fn interval(characters: &[char], start: usize, rust: &mut String) -> Result<usize, String> {
    let no_interval = || {
        "a '{' that opens no interval ({n}, {n,}, {n,m}): write \\{ for the character".to_string()
    };
    let Some(length) = characters[start..]
        .iter()
        .position(|&character| character == '}')
    else {
        return Err(no_interval());
    };
    let body: String = characters[start..start + length].iter().collect();
    let (low, high) = match body.split_once(',') {
        Some((low, high)) => (low, Some(high)),
        None => (body.as_str(), None),
    };
    let is_number =
        |text: &str| !text.is_empty() && text.chars().all(|digit| digit.is_ascii_digit());
    let low = if low.is_empty() && high.is_some() {
        "0"
    } else {
        low
    };
    if !is_number(low) || high.is_some_and(|high| !high.is_empty() && !is_number(high)) {
        return Err(no_interval());
    }
    match high {
        Some(high) => {
            let _ = write!(rust, "{{{low},{high}}}");
        }
        None => {
            let _ = write!(rust, "{{{low}}}");
        }
    }
    Ok(start + length + 1)
}

#[cfg(test)]
mod tests;
