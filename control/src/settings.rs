//! A configuration file under a command line: every option of a clap command may also be set
//! in a flat TOML file, with one definition of each option (its parser, its default, its
//! environment variable) — the clap argument.
//!
//! The key of an option is its long name with `_` for `-` (`--lease-timeout` → `lease_timeout`).
//! Flags take `true`/`false`, repeatable options a list, the others one value (text or a
//! number), written as on the command line (`"90s"`, `"127.0.0.1:8443"`). Precedence: command
//! line > environment > file > built-in default.
//!
//! How: the caller parses the command line once through [`relaxed`] (relations between options
//! set aside) to learn what the command line and the environment set. [`overlay`] checks each
//! file entry — a known key, the right type, a value its option's own parser accepts — and turns
//! the entries of options still at their default into command-line words. The caller parses
//! again, those words before the real ones, through the real command: that parse checks the
//! relations between options wherever they came from ([`Overlay::explain`] points its
//! complaints at the file's lines). [`Origins`] then tells where each value came from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use latch_common::config_file::{self, Entry, Location, Mistake, Mistakes, Origin};

/// The file key of `arg`: its long name with `_` for `-`.
pub fn key(arg: &Arg) -> Option<String> {
    arg.get_long().map(|long| long.replace('-', "_"))
}

/// The options of `command` a file may set: those with a long name, but not `--help`,
/// `--version`, nor the ids in `command_line_only`.
pub fn settable<'a>(
    command: &'a Command,
    command_line_only: &'a [&'a str],
) -> impl Iterator<Item = &'a Arg> + 'a {
    command.get_arguments().filter(move |arg| {
        let id = arg.get_id().as_str();
        arg.get_long().is_some()
            && !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
            && !command_line_only.contains(&id)
    })
}

/// `command` (and its subcommands) parsing on despite complaints, for the first parse when the
/// real one complained about relations between options (requires, conflicts): an option the
/// command line needs may come from the file. The final parse checks them all.
pub fn relaxed(command: Command) -> Command {
    command.ignore_errors(true).mut_subcommands(relaxed)
}

/// A configuration file, parsed.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it was read.
    pub path: PathBuf,
    /// Its `key = value` lines.
    pub entries: Vec<Entry>,
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<ConfigFile, Mistakes> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Mistake::in_file(path, format!("cannot read it: {e}")))?;
        Ok(ConfigFile {
            path: path.to_owned(),
            entries: config_file::entries(path, &text)?,
        })
    }
}

/// The file's values for the options the command line and the environment left alone.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    /// The file.
    path: PathBuf,
    /// The options the file sets, in file order.
    options: Vec<FileOption>,
}

/// An option the file sets.
#[derive(Debug, Clone)]
struct FileOption {
    /// Its clap id.
    id: String,
    /// Its key.
    key: String,
    /// Where its value is.
    at: Location,
    /// Its command-line words (`--lease-timeout=90s`).
    words: Vec<OsString>,
}

/// The environment variable behind a value clap refused, when the value came from there (the
/// option is not on the command line `argv` and has a variable that is set): clap's own message
/// names only the option.
pub fn refused_variable(
    command: &Command,
    error: &clap::Error,
    argv: &[OsString],
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = shown.split_whitespace().next()?.strip_prefix("--")?;
    let written = |word: &OsString| {
        word.to_str().is_some_and(|word| {
            word.strip_prefix("--")
                .and_then(|rest| rest.strip_prefix(long))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
        })
    };
    if argv.iter().any(written) {
        return None;
    }
    let mut commands = vec![command];
    while let Some(command) = commands.pop() {
        commands.extend(command.get_subcommands());
        let variable = command
            .get_arguments()
            .filter(|arg| arg.get_long() == Some(long))
            .find_map(|arg| arg.get_env())
            .filter(|name| std::env::var_os(name).is_some());
        if let Some(name) = variable {
            return Some(name.to_string_lossy().into_owned());
        }
    }
    None
}

impl Overlay {
    /// The command-line words of every option the file sets, to go before the real ones.
    pub fn words(&self) -> Vec<OsString> {
        self.options
            .iter()
            .flat_map(|option| option.words.iter().cloned())
            .collect()
    }
}

/// Why the final parse failed.
#[derive(Debug)]
pub enum Refused {
    /// Because of options the file set: clap's complaint at each of their lines.
    File(Mistakes),
    /// Because of the command line or the environment alone: report it as clap does.
    Clap(clap::Error),
}

/// The final parse: `command` on `before` (program and subcommand names), the file's words,
/// then `after` (the real arguments that followed). A failure that an option of the file takes
/// part in — named in clap's complaint, or without which the complaint goes away — is reported
/// at that option's line.
pub fn reparse(
    command: &Command,
    before: &[OsString],
    overlay: &Overlay,
    after: &[OsString],
) -> Result<ArgMatches, Refused> {
    let parse = |words: Vec<OsString>| {
        let argv = before
            .iter()
            .cloned()
            .chain(words)
            .chain(after.iter().cloned());
        command.clone().try_get_matches_from(argv)
    };
    let error = match parse(overlay.words()) {
        Ok(matches) => return Ok(matches),
        Err(error) => error,
    };
    let message = clap_message(&error);
    let named = |option: &FileOption| {
        let long = format!("--{}", option.key.replace('_', "-"));
        message.match_indices(&long).any(|(at, _)| {
            !message[at + long.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '-')
        })
    };
    let needed = |option: &FileOption| {
        let without = overlay
            .options
            .iter()
            .filter(|other| other.id != option.id)
            .flat_map(|other| other.words.iter().cloned())
            .collect();
        parse(without).map_or_else(|e| clap_message(&e) != message, |_| true)
    };
    let mistakes: Vec<Mistake> = overlay
        .options
        .iter()
        .filter(|option| named(option) || needed(option))
        .map(|option| {
            Mistake::at(
                &overlay.path,
                option.at,
                format!("{message} (`{}` is set here)", option.key),
            )
        })
        .collect();
    if mistakes.is_empty() {
        Err(Refused::Clap(error))
    } else {
        Err(Refused::File(Mistakes(mistakes)))
    }
}

/// Checks every entry of `file` against the options of `command` — known key, right type, a
/// value its option's parser accepts — and returns the words for the good ones that `matches`
/// (the first parse) shows were set neither on the command line nor in the environment, with
/// every mistake, each at its line. (The good entries go on, so that the checks of the values
/// that come later report their mistakes too.)
pub fn overlay(
    command: &Command,
    matches: &ArgMatches,
    file: &ConfigFile,
    command_line_only: &[&str],
) -> (Overlay, Vec<Mistake>) {
    // A copy that parses one option at a time through its own parser, without the environment
    // (relations are for the final parse).
    let checker = command.clone().mut_args(|arg| arg.env(None::<&str>));
    // Built, so that each option knows how it is shown in clap's messages.
    let mut built = command.clone();
    built.build();
    let command = &built;
    let mut overlay = Overlay {
        path: file.path.clone(),
        ..Overlay::default()
    };
    let mut mistakes = Vec::new();
    for entry in &file.entries {
        let Some(arg) = settable(command, command_line_only)
            .find(|arg| key(arg).as_deref() == Some(entry.key.as_str()))
        else {
            let message = match command
                .get_arguments()
                .find(|arg| key(arg).as_deref() == Some(entry.key.as_str()))
            {
                Some(arg) => format!(
                    "`{}` cannot be set in the configuration file: give --{} on the command line when it is needed",
                    entry.key,
                    arg.get_long().unwrap_or_default()
                ),
                None => {
                    let keys: Vec<String> = settable(command, command_line_only)
                        .filter_map(key)
                        .collect();
                    config_file::unknown_key(&entry.key, keys.iter().map(String::as_str))
                }
            };
            mistakes.push(Mistake::at(&file.path, entry.key_at, message));
            continue;
        };
        let words = match words(arg, &entry.key, &entry.value) {
            Ok(words) => words,
            Err(message) => {
                mistakes.push(Mistake::at(&file.path, entry.value_at, message));
                continue;
            }
        };
        let parsed = checker
            .clone()
            .try_get_matches_from(std::iter::once(OsString::from("check")).chain(words.clone()));
        // Relations (requires, conflicts) are the final parse's business.
        if let Err(error) = parsed
            && !matches!(
                error.kind(),
                clap::error::ErrorKind::ArgumentConflict
                    | clap::error::ErrorKind::MissingRequiredArgument
            )
        {
            let message =
                clap_message(&error).replace(&format!("'{arg}'"), &format!("`{}`", entry.key));
            mistakes.push(Mistake::at(&file.path, entry.value_at, message));
            continue;
        }
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        overlay.options.push(FileOption {
            id: id.to_owned(),
            key: entry.key.clone(),
            at: entry.value_at,
            words,
        });
    }
    (overlay, mistakes)
}

/// The command-line words for `value` of `arg`, or what to write instead.
fn words(arg: &Arg, key: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let long = arg.get_long().unwrap_or_default();
    let word = |text: String| OsString::from(format!("--{long}={text}"));
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, toml::Value::Boolean(true)) => {
            Ok(vec![OsString::from(format!("--{long}"))])
        }
        (ArgAction::SetTrue, toml::Value::Boolean(false)) => Ok(Vec::new()),
        (ArgAction::SetTrue, _) => Err(format!("`{key}` takes true or false: `{key} = true`")),
        (ArgAction::Append, toml::Value::Array(items)) => items
            .iter()
            .map(|item| {
                scalar(item).map(word).ok_or_else(|| {
                    format!("`{key}` takes a list of texts: `{key} = [\"…\", \"…\"]`")
                })
            })
            .collect(),
        (ArgAction::Append, _) => Err(format!(
            "`{key}` takes a list, even of one: `{key} = [\"…\"]`"
        )),
        (ArgAction::Set, value) => scalar(value).map(|text| vec![word(text)]).ok_or_else(|| {
            format!("`{key}` takes one value, as on the command line: `{key} = \"…\"`")
        }),
        _ => Err(format!("`{key}` cannot be set in the file")),
    }
}

/// A text or a number as a command-line value.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        _ => None,
    }
}

/// A clap error as one line, without usage or tips.
pub fn clap_message(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let first = rendered.split("\n\n").next().unwrap_or_default();
    let text = first.strip_prefix("error: ").unwrap_or(first);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where each option's effective value came from.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// Option id → (its key, its origin).
    origins: BTreeMap<String, (String, Origin)>,
}

impl Origins {
    /// The origins of the settable options of `command` after the final parse `matches`,
    /// with `overlay` the file's part.
    pub fn new(
        command: &Command,
        matches: &ArgMatches,
        overlay: &Overlay,
        command_line_only: &[&str],
    ) -> Origins {
        let origins = command
            .get_arguments()
            .filter(|arg| arg.get_long().is_some())
            .filter_map(|arg| {
                let id = arg.get_id().as_str();
                let key = key(arg)?;
                let from_file = overlay.options.iter().find(|option| option.id == id);
                let origin = match (from_file, matches.value_source(id)) {
                    (Some(option), _) if !command_line_only.contains(&id) => Origin::File {
                        path: overlay.path.clone(),
                        at: Some(option.at),
                    },
                    (_, Some(ValueSource::CommandLine)) => {
                        Origin::CommandLine(format!("--{}", arg.get_long().unwrap_or_default()))
                    }
                    (_, Some(ValueSource::EnvVariable)) => Origin::Env(
                        arg.get_env()
                            .map(|name| name.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ),
                    _ => Origin::Default,
                };
                Some((id.to_owned(), (key, origin)))
            })
            .collect();
        Origins { origins }
    }

    /// The origin of option `id` (the default when unknown).
    pub fn of(&self, id: &str) -> Origin {
        self.origins
            .get(id)
            .map_or(Origin::Default, |(_, origin)| origin.clone())
    }

    /// A mistake about option `id`'s value at its origin: the message, prefixed with the
    /// option's key unless it starts with it.
    pub fn mistake(&self, id: &str, message: impl std::fmt::Display) -> Mistake {
        let key = format!(
            "`{}`",
            self.origins.get(id).map_or(id, |(key, _)| key.as_str())
        );
        let message = message.to_string();
        Mistake {
            origin: self.of(id),
            message: if message.starts_with(&key) {
                message
            } else {
                format!("{key}: {message}")
            },
        }
    }
}

/// The effective value of every settable option of `command` after the final parse `matches`,
/// one line each with its origin (for `config check`). `shown` may mask a value (it gets the
/// option id and the value as text).
pub fn effective_values(
    command: &Command,
    matches: &ArgMatches,
    origins: &Origins,
    command_line_only: &[&str],
    shown: &dyn Fn(&str, String) -> String,
) -> Vec<String> {
    settable(command, command_line_only)
        .filter_map(|arg| {
            let id = arg.get_id().as_str();
            let key = key(arg)?;
            let raw: Vec<String> = matches
                .try_get_raw(id)
                .ok()
                .flatten()
                .map(|values| {
                    values
                        .map(|value| shown(id, value.to_string_lossy().into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let value = match arg.get_action() {
                ArgAction::SetTrue => Some(toml::Value::Boolean(raw.iter().any(|v| v == "true"))),
                ArgAction::Append => Some(toml::Value::Array(
                    raw.into_iter().map(toml::Value::String).collect(),
                )),
                _ => raw
                    .into_iter()
                    .next()
                    .map(|text| match text.parse::<i64>() {
                        Ok(number) => toml::Value::Integer(number),
                        Err(_) => toml::Value::String(text),
                    }),
            };
            Some(config_file::effective_line(
                &key,
                value.as_ref(),
                &origins.of(id),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small command like `serve`: each kind of option once.
    fn command() -> Command {
        Command::new("serve")
            .arg(
                Arg::new("listen")
                    .long("listen")
                    .env("LATCH_TEST_SETTINGS_LISTEN")
                    .default_value("127.0.0.1:8443")
                    .value_parser(clap::value_parser!(std::net::SocketAddr)),
            )
            .arg(
                Arg::new("attempts")
                    .long("max-attempts")
                    .default_value("5")
                    .value_parser(clap::value_parser!(u32).range(1..=100)),
            )
            .arg(
                Arg::new("insecure_http")
                    .long("insecure-http")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("tls_names")
                    .long("tls-name")
                    .action(ArgAction::Append),
            )
            .arg(Arg::new("tls_cert").long("tls-cert").requires("tls_key"))
            .arg(Arg::new("tls_key").long("tls-key"))
            .arg(Arg::new("new_ca").long("new-ca").action(ArgAction::SetTrue))
    }

    const ONLY: &[&str] = &["new_ca"];

    fn file(text: &str) -> ConfigFile {
        let path = PathBuf::from("control.toml");
        ConfigFile {
            entries: config_file::entries(&path, text).unwrap(),
            path,
        }
    }

    /// Both parses as `latch-control` does them; the final matches and the overlay.
    fn settle(args: &[&str], text: &str) -> Result<(ArgMatches, Overlay), Mistakes> {
        let argv: Vec<OsString> = std::iter::once("serve")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let first = command()
            .try_get_matches_from(&argv)
            .or_else(|_| relaxed(command()).try_get_matches_from(&argv))
            .unwrap();
        let (overlay, mut mistakes) = overlay(&command(), &first, &file(text), ONLY);
        match reparse(&command(), &argv[..1], &overlay, &argv[1..]) {
            Ok(_) if !mistakes.is_empty() => Err(Mistakes(mistakes)),
            Ok(matches) => Ok((matches, overlay)),
            Err(Refused::File(more)) => {
                mistakes.extend(more.0);
                Err(Mistakes(mistakes))
            }
            Err(Refused::Clap(error)) => Err(Mistakes(vec![Mistake {
                origin: Origin::Default,
                message: clap_message(&error),
            }])),
        }
    }

    fn errors(args: &[&str], text: &str) -> Vec<String> {
        settle(args, text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_file_sets_what_the_command_line_does_not() {
        let text = "listen = \"127.0.0.1:9000\"\nmax_attempts = 7\ninsecure_http = true\ntls_name = [\"a.example\", \"b.example\"]\n";
        let (matches, overlay) = settle(&["--max-attempts", "9"], text).unwrap();
        assert_eq!(
            matches
                .get_one::<std::net::SocketAddr>("listen")
                .unwrap()
                .port(),
            9000
        );
        assert_eq!(matches.get_one::<u32>("attempts"), Some(&9));
        assert!(matches.get_flag("insecure_http"));
        let names: Vec<&String> = matches.get_many("tls_names").unwrap().collect();
        assert_eq!(names, ["a.example", "b.example"]);
        let origins = Origins::new(&command(), &matches, &overlay, ONLY);
        assert_eq!(origins.of("listen").to_string(), "control.toml:1:10");
        assert_eq!(
            origins.of("attempts").to_string(),
            "command line --max-attempts"
        );
        assert_eq!(origins.of("tls_cert"), Origin::Default);
        let lines = effective_values(&command(), &matches, &origins, ONLY, &|_, v| v);
        assert_eq!(
            lines
                .iter()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>(),
            [
                "listen = \"127.0.0.1:9000\" (control.toml:1:10)",
                "max_attempts = 9 (command line --max-attempts)",
                "insecure_http = true (control.toml:3:17)",
                "tls_name = [\"a.example\", \"b.example\"] (control.toml:4:12)",
                "tls_cert: not set (default)",
                "tls_key: not set (default)",
            ]
        );
    }

    #[test]
    fn each_mistake_points_at_its_line() {
        assert_eq!(
            errors(
                &[],
                "lisen = \"127.0.0.1:1\"\nmax_attempts = 500\ninsecure_http = \"yes\"\ntls_name = \"a\"\nnew_ca = true\nlisten = 80\n"
            ),
            [
                "control.toml:1:1: unknown key `lisen`: did you mean `listen`?",
                "control.toml:2:16: invalid value '500' for `max_attempts`: 500 is not in 1..=100",
                "control.toml:3:17: `insecure_http` takes true or false: `insecure_http = true`",
                "control.toml:4:12: `tls_name` takes a list, even of one: `tls_name = [\"…\"]`",
                "control.toml:5:1: `new_ca` cannot be set in the configuration file: give --new-ca on the command line when it is needed",
                "control.toml:6:10: invalid value '80' for `listen`: invalid socket address syntax",
            ]
        );
    }

    #[test]
    fn relations_hold_across_the_file_and_the_command_line() {
        // The file gives what the command line's option requires.
        let (matches, _) = settle(&["--tls-cert", "c.pem"], "tls_key = \"k.pem\"\n").unwrap();
        assert_eq!(matches.get_one::<String>("tls_key").unwrap(), "k.pem");
        // A requirement the file leaves unmet is pointed at the file's line.
        let found = errors(&[], "# TLS\ntls_cert = \"c.pem\"\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "control.toml:2:12: the following required arguments were not provided: --tls-key"
            ),
            "{found:?}"
        );
        // One only the command line causes is clap's own.
        assert_eq!(
            errors(&["--tls-cert", "c.pem"], "max_attempts = 3\n"),
            ["default: the following required arguments were not provided: --tls-key <tls_key>"]
        );
    }
}
