//! Configuration files (flat TOML) read with positions, and mistakes that point at them.
//!
//! Both binaries read one TOML file of `key = value` lines (no sections). [`entries`] parses it
//! and keeps where each key and value starts, so that a mistake found later — a typo in a key, a
//! value of the wrong type, a value out of range — is reported as `FILE:LINE:COLUMN`. [`Origin`]
//! says where an effective value came from (the file, the environment, the command line or the
//! built-in default); [`Mistake`] pairs a message with it. Reading the file is the caller's job
//! (this crate does no I/O).

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a file: 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, in characters.
    pub column: usize,
}

impl Location {
    /// The position of byte `offset` in `text` (an offset past the end means the end).
    pub fn of(text: &str, offset: usize) -> Location {
        let mut end = offset.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let before = &text[..end];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// One `key = value` line of a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key as written.
    pub key: String,
    /// Where the key starts.
    pub key_at: Location,
    /// Where the value starts.
    pub value_at: Location,
    /// The value.
    pub value: toml::Value,
}

/// Where an effective setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Nothing set it: the built-in default.
    Default,
    /// The configuration file; `at` is the value's position when known.
    File {
        /// The file.
        path: PathBuf,
        /// Where in it.
        at: Option<Location>,
    },
    /// An environment variable (its name).
    Env(String),
    /// A command-line option (as written, e.g. `--listen`).
    CommandLine(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File { path, at: None } => write!(f, "{}", path.display()),
            Origin::File { path, at: Some(at) } => {
                write!(f, "{}:{}:{}", path.display(), at.line, at.column)
            }
            Origin::Env(name) => write!(f, "environment {name}"),
            Origin::CommandLine(flag) => write!(f, "command line {flag}"),
        }
    }
}

/// A mistake in the configuration: where, and what is wrong (and what to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mistake {
    /// Where the faulty value came from.
    pub origin: Origin,
    /// What is wrong, and the fix.
    pub message: String,
}

impl Mistake {
    /// A mistake about the file as a whole (it cannot be read, for instance).
    pub fn in_file(path: &Path, message: impl Into<String>) -> Mistake {
        Mistake {
            origin: Origin::File {
                path: path.to_owned(),
                at: None,
            },
            message: message.into(),
        }
    }

    /// A mistake at a position of the file.
    pub fn at(path: &Path, at: Location, message: impl Into<String>) -> Mistake {
        Mistake {
            origin: Origin::File {
                path: path.to_owned(),
                at: Some(at),
            },
            message: message.into(),
        }
    }
}

impl fmt::Display for Mistake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// Every mistake found in a configuration (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mistakes(pub Vec<Mistake>);

impl fmt::Display for Mistakes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, mistake) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{mistake}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Mistakes {}

impl Mistakes {
    /// `mistakes` in reading order: the file's by position, then the environment's, the command
    /// line's and the defaults'.
    pub fn in_order(mut mistakes: Vec<Mistake>) -> Mistakes {
        mistakes.sort_by_key(|mistake| match &mistake.origin {
            Origin::File { at, .. } => (0, at.map_or((0, 0), |at| (at.line, at.column))),
            Origin::Env(_) => (1, (0, 0)),
            Origin::CommandLine(_) => (2, (0, 0)),
            Origin::Default => (3, (0, 0)),
        });
        Mistakes(mistakes)
    }
}

impl From<Mistake> for Mistakes {
    fn from(mistake: Mistake) -> Mistakes {
        Mistakes(vec![mistake])
    }
}

/// Parses the flat TOML document `text` (read from `path`) into its entries, in file order.
/// Each syntax error, and each section or table (these files have none), is a mistake with its
/// position.
pub fn entries(path: &Path, text: &str) -> Result<Vec<Entry>, Mistakes> {
    let (document, errors) = toml::de::DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return Err(Mistakes(
            errors
                .iter()
                .map(|error| {
                    let message = format!("{} (this is not valid TOML)", error.message().trim());
                    match error.span() {
                        Some(span) => Mistake::at(path, Location::of(text, span.start), message),
                        None => Mistake::in_file(path, message),
                    }
                })
                .collect(),
        ));
    }
    let mut values: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        Mistakes::from(Mistake::in_file(path, error.message().trim().to_owned()))
    })?;
    let mut found: Vec<Entry> = Vec::new();
    let mut mistakes = Vec::new();
    for (key, value) in document.get_ref() {
        let key_at = Location::of(text, key.span().start);
        let value_at = Location::of(text, value.span().start);
        let name = key.get_ref().to_string();
        match values.remove(&name) {
            Some(toml::Value::Table(_)) => mistakes.push(Mistake::at(
                path,
                key_at,
                format!(
                    "`{name}` is a section or a table, and this file has none: write `key = value` lines only, without [sections] or dotted keys"
                ),
            )),
            Some(value) => found.push(Entry {
                key: name,
                key_at,
                value_at,
                value,
            }),
            None => mistakes.push(Mistake::at(path, key_at, format!("`{name}` has no value"))),
        }
    }
    if !mistakes.is_empty() {
        return Err(Mistakes::in_order(mistakes));
    }
    found.sort_by_key(|entry| (entry.key_at.line, entry.key_at.column));
    Ok(found)
}

/// The message for a key no option has: names the closest known key when one is near.
pub fn unknown_key<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    match closest(key, known) {
        Some(near) => format!("unknown key `{key}`: did you mean `{near}`?"),
        None => format!(
            "unknown key `{key}`: remove it (every key is listed, with its default, in the reference file)"
        ),
    }
}

/// The known word nearest to `word` (edit distance at most a third of its length, at least 2).
fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    known
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// One line of `config check`'s effective values: `key = value` (or that it is not set) and
/// where it came from.
pub fn effective_line(key: &str, value: Option<&toml::Value>, origin: &Origin) -> String {
    let setting = match value {
        Some(value) => format!("{key} = {value}"),
        None => format!("{key}: not set"),
    };
    format!("  {setting:<48} ({origin})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("/etc/latch/x.toml")
    }

    #[test]
    fn locations_count_lines_and_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(Location::of(text, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of(text, 6), Location { line: 2, column: 1 });
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(Location::of(text, 12), Location { line: 2, column: 6 });
        assert_eq!(Location::of(text, 999), Location { line: 3, column: 1 });
        // Inside a multi-byte character: its start.
        assert_eq!(Location::of(text, 8), Location { line: 2, column: 2 });
    }

    #[test]
    fn entries_keep_file_order_and_positions() {
        let text = "# comment\nzeta = 1\n  alpha = [\"a\", \"b\"]\n";
        let found = entries(path(), text).unwrap();
        assert_eq!(
            found,
            vec![
                Entry {
                    key: "zeta".into(),
                    key_at: Location { line: 2, column: 1 },
                    value_at: Location { line: 2, column: 8 },
                    value: toml::Value::Integer(1),
                },
                Entry {
                    key: "alpha".into(),
                    key_at: Location { line: 3, column: 3 },
                    value_at: Location {
                        line: 3,
                        column: 11
                    },
                    value: toml::Value::Array(vec!["a".into(), "b".into()]),
                },
            ]
        );
    }

    #[test]
    fn syntax_errors_and_sections_point_at_their_line() {
        let error = entries(path(), "a = 1\nb = \"unclosed\n").unwrap_err();
        assert!(
            error.to_string().starts_with("/etc/latch/x.toml:2:"),
            "{error}"
        );
        let error = entries(path(), "a = 1\n\n[sso]\nissuer = \"x\"\n").unwrap_err();
        assert_eq!(error.0.len(), 1, "{error}");
        assert!(
            error
                .to_string()
                .starts_with("/etc/latch/x.toml:3:2: `sso` is a section"),
            "{error}"
        );
        let error = entries(path(), "a = 1\na = 2\n").unwrap_err();
        assert!(
            error.to_string().starts_with("/etc/latch/x.toml:2:"),
            "{error}"
        );
    }

    #[test]
    fn unknown_keys_suggest_the_nearest() {
        let known = ["allowed_groups", "uid_min", "uid_max"];
        assert_eq!(
            unknown_key("allowed_groupz", known),
            "unknown key `allowed_groupz`: did you mean `allowed_groups`?"
        );
        assert!(unknown_key("colour", known).contains("remove it"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn origins_read_as_places() {
        let at = Origin::File {
            path: path().to_owned(),
            at: Some(Location { line: 4, column: 9 }),
        };
        assert_eq!(at.to_string(), "/etc/latch/x.toml:4:9");
        assert_eq!(
            Origin::Env("LATCH_LISTEN".into()).to_string(),
            "environment LATCH_LISTEN"
        );
        let mistakes = Mistakes(vec![
            Mistake::at(path(), Location { line: 1, column: 1 }, "one"),
            Mistake::in_file(path(), "two"),
        ]);
        assert_eq!(
            mistakes.to_string(),
            "/etc/latch/x.toml:1:1: one; /etc/latch/x.toml: two"
        );
    }
}
