//! Host labels (`env=prod`, `team=db`) and label selectors (`env=prod,team in (db,web)`).
//!
//! Labels scope what a delegated admin may touch and which hosts a request or a listing covers,
//! so a selector is parsed strictly: anything it does not understand is refused with the position
//! and what was expected, never read as "matches everything".
//!
//! Selector grammar (comma-separated requirements, all must hold — as in Kubernetes):
//!
//! ```text
//! key=value   key==value   key!=value   key in (v1,v2)   key notin (v1,v2)   key   !key
//! ```
//!
//! `key!=value` and `key notin (…)` also match hosts without the key; `!key` matches hosts without
//! it. An empty selector matches every host; [`Selector::is_empty`] lets a caller refuse that where
//! "every host" must be said explicitly.

use std::collections::BTreeMap;
use std::fmt;

use crate::names::ValidationError;

/// Longest label key accepted.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value accepted.
pub const MAX_LABEL_VALUE_LEN: usize = 63;
/// Most labels one host may carry.
pub const MAX_LABELS_PER_HOST: usize = 64;
/// Most requirements one selector may hold.
pub const MAX_SELECTOR_REQUIREMENTS: usize = 32;
/// Most values one `in`/`notin` list may hold.
pub const MAX_SELECTOR_VALUES: usize = 64;

/// A host's labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// Checks a label key: 1–63 characters of `a-z 0-9 . _ - /`, starting and ending with a letter or
/// digit.
pub fn validate_label_key(key: &str) -> Result<(), ValidationError> {
    let field = "labels";
    if key.is_empty() || key.len() > MAX_LABEL_KEY_LEN {
        return Err(ValidationError::new(
            field,
            format!("label key {key:?} must be 1 to {MAX_LABEL_KEY_LEN} characters"),
        ));
    }
    let allowed = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')
    };
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !key.chars().all(allowed) || !edge(key.chars().next()) || !edge(key.chars().last()) {
        return Err(ValidationError::new(
            field,
            format!(
                "label key {key:?} may hold only lowercase letters, digits, '.', '_', '-' and '/', and must start and end with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// Checks a label value: 0–63 characters of `A-Z a-z 0-9 . _ -`, starting and ending with a
/// letter or digit when not empty.
pub fn validate_label_value(key: &str, value: &str) -> Result<(), ValidationError> {
    let field = "labels";
    if value.len() > MAX_LABEL_VALUE_LEN {
        return Err(ValidationError::new(
            field,
            format!("the value of label {key:?} is longer than {MAX_LABEL_VALUE_LEN} characters"),
        ));
    }
    if value.is_empty() {
        return Ok(());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !value.chars().all(allowed) || !edge(value.chars().next()) || !edge(value.chars().last()) {
        return Err(ValidationError::new(
            field,
            format!(
                "the value of label {key:?} may hold only letters, digits, '.', '_' and '-', and must start and end with a letter or digit"
            ),
        ));
    }
    Ok(())
}

/// Checks a whole label set: every key and value, and at most [`MAX_LABELS_PER_HOST`] labels.
pub fn validate_labels(labels: &Labels) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS_PER_HOST {
        return Err(ValidationError::new(
            "labels",
            format!("a host may carry at most {MAX_LABELS_PER_HOST} labels"),
        ));
    }
    for (key, value) in labels {
        validate_label_key(key)?;
        validate_label_value(key, value)?;
    }
    Ok(())
}

/// Parses `key=value` (as given on a command line) into a checked pair.
pub fn parse_label(text: &str) -> Result<(String, String), ValidationError> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(ValidationError::new(
            "labels",
            format!("{text:?} is not a label: write key=value, e.g. env=prod"),
        ));
    };
    let (key, value) = (key.trim(), value.trim());
    validate_label_key(key)?;
    validate_label_value(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key in (…)`: the host has the key with one of the values.
    In(String, Vec<String>),
    /// `key!=value` or `key notin (…)`: the host lacks the key or has another value.
    NotIn(String, Vec<String>),
    /// `key`: the host has the key.
    Exists(String),
    /// `!key`: the host lacks the key.
    DoesNotExist(String),
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Self::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Self::Exists(key) => labels.contains_key(key),
            Self::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::In(key, values) if values.len() == 1 => write!(f, "{key}={}", values[0]),
            Self::In(key, values) => write!(f, "{key} in ({})", values.join(",")),
            Self::NotIn(key, values) if values.len() == 1 => write!(f, "{key}!={}", values[0]),
            Self::NotIn(key, values) => write!(f, "{key} notin ({})", values.join(",")),
            Self::Exists(key) => write!(f, "{key}"),
            Self::DoesNotExist(key) => write!(f, "!{key}"),
        }
    }
}

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses a selector such as `env=prod,team in (db,web),!legacy`.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        Parser::new(text).selector()
    }

    /// Whether the selector has no requirement (and so matches every host).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, in the order written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn error(&self, expected: &str) -> ValidationError {
        ValidationError::new(
            "selector",
            format!(
                "{:?}: expected {expected} at character {} (write e.g. env=prod,team in (db,web))",
                self.text,
                self.pos + 1
            ),
        )
    }

    fn skip_spaces(&mut self) {
        while self.rest().starts_with(' ') {
            self.pos += 1;
        }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// A key or value: the longest run of characters that may appear in either.
    fn word(&mut self) -> &'a str {
        self.skip_spaces();
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
            .unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn key(&mut self) -> Result<String, ValidationError> {
        let start = self.pos;
        let key = self.word();
        if key.is_empty() {
            self.pos = start;
            return Err(self.error("a label key"));
        }
        validate_label_key(key).map_err(|e| ValidationError::new("selector", e.reason))?;
        Ok(key.to_owned())
    }

    fn value(&mut self, key: &str) -> Result<String, ValidationError> {
        let value = self.word();
        validate_label_value(key, value).map_err(|e| ValidationError::new("selector", e.reason))?;
        Ok(value.to_owned())
    }

    fn values(&mut self, key: &str) -> Result<Vec<String>, ValidationError> {
        if !self.eat("(") {
            return Err(self.error("'(' and a list of values"));
        }
        let mut values = Vec::new();
        loop {
            let value = self.value(key)?;
            if value.is_empty() {
                return Err(self.error("a value"));
            }
            values.push(value);
            if values.len() > MAX_SELECTOR_VALUES {
                return Err(ValidationError::new(
                    "selector",
                    format!("a value list may hold at most {MAX_SELECTOR_VALUES} values"),
                ));
            }
            if self.eat(")") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err(self.error("',' or ')'"));
            }
        }
    }

    /// `in` or `notin` as a whole word (so a key called `index` is not read as `in`).
    fn keyword(&mut self, word: &str) -> bool {
        self.skip_spaces();
        // What follows the word, if the text holds it (never a slice at a byte offset, which
        // could fall inside a multi-byte character).
        let after = self.rest().strip_prefix(word).map(|r| r.chars().next());
        if matches!(after, Some(Some(' ' | '('))) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn requirement(&mut self) -> Result<Requirement, ValidationError> {
        if self.eat("!") {
            return Ok(Requirement::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        if self.eat("!=") {
            return Ok(Requirement::NotIn(key.clone(), vec![self.value(&key)?]));
        }
        if self.eat("==") || self.eat("=") {
            return Ok(Requirement::In(key.clone(), vec![self.value(&key)?]));
        }
        if self.keyword("notin") {
            return Ok(Requirement::NotIn(key.clone(), self.values(&key)?));
        }
        if self.keyword("in") {
            return Ok(Requirement::In(key.clone(), self.values(&key)?));
        }
        Ok(Requirement::Exists(key))
    }

    fn selector(mut self) -> Result<Selector, ValidationError> {
        let mut requirements = Vec::new();
        self.skip_spaces();
        if self.rest().is_empty() {
            return Ok(Selector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            if requirements.len() > MAX_SELECTOR_REQUIREMENTS {
                return Err(ValidationError::new(
                    "selector",
                    format!("a selector may hold at most {MAX_SELECTOR_REQUIREMENTS} requirements"),
                ));
            }
            self.skip_spaces();
            if self.rest().is_empty() {
                return Ok(Selector { requirements });
            }
            if !self.eat(",") {
                return Err(self.error("',' or the end of the selector"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_parse_and_match_like_kubernetes() {
        let db_prod = labels(&[("env", "prod"), ("team", "db")]);
        let web_dev = labels(&[("env", "dev"), ("team", "web"), ("legacy", "")]);
        let cases = [
            ("", true, true),
            ("env=prod", true, false),
            ("env==prod", true, false),
            ("env!=prod", false, true),
            ("team in (db,web)", true, true),
            ("team in (db, web) , env = prod", true, false),
            ("team notin (db)", false, true),
            ("legacy", false, true),
            ("!legacy", true, false),
            ("env=prod,team in (db,web)", true, false),
            ("owner!=alice", true, true),
            ("index=1", false, false),
        ];
        for (text, on_db_prod, on_web_dev) in cases {
            let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(
                selector.matches(&db_prod),
                on_db_prod,
                "{text:?} on db_prod"
            );
            assert_eq!(
                selector.matches(&web_dev),
                on_web_dev,
                "{text:?} on web_dev"
            );
            let again = Selector::parse(&selector.to_string()).unwrap();
            assert_eq!(again, selector, "{text:?} round-trips through Display");
        }
    }

    #[test]
    fn malformed_selectors_are_refused_never_read_as_everything() {
        for text in [
            ",",
            "env=prod,",
            "=prod",
            "env=prod team=db",
            "team in db",
            "team in (db",
            "team in (db;web)",
            "Env=prod",
            "env=pr:od",
            "env=prod\n",
            "env=-prod",
            "!",
            "env in ()",
            // Found by schemathesis: a multi-byte character where `in`/`notin` might start
            // panicked the parser (a slice inside the character).
            "0:\u{80}",
            "k \u{e9}",
            "k \u{1F600}x",
            "k\u{80}",
            "k notin\u{a0}(a)",
        ] {
            let err = Selector::parse(text).expect_err(text);
            assert_eq!(err.field, "selector", "{text:?}");
            assert!(!err.reason.is_empty());
        }
        let long = (0..=MAX_SELECTOR_REQUIREMENTS)
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(Selector::parse(&long).is_err());
    }

    #[test]
    fn labels_are_checked() {
        assert_eq!(
            parse_label("env=prod").unwrap(),
            ("env".into(), "prod".into())
        );
        assert_eq!(
            parse_label("legacy=").unwrap(),
            ("legacy".into(), "".into())
        );
        assert_eq!(
            parse_label("team.example.com/owner=db-team").unwrap().0,
            "team.example.com/owner"
        );
        for bad in [
            "env",
            "=prod",
            "ENV=prod",
            "env=prod!",
            "env=a b",
            "-x=1",
            "x=-1",
        ] {
            assert!(parse_label(bad).is_err(), "{bad:?}");
        }
        assert!(parse_label(&format!("k={}", "v".repeat(64))).is_err());
        let many: Labels = (0..=MAX_LABELS_PER_HOST)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        assert!(validate_labels(&many).is_err());
    }
}
