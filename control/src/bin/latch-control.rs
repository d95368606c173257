//! `latch-control`: the Latch control-plane server.

#[path = "latch-control/serve.rs"]
mod serve;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use latch_common::api::format_window;
use latch_common::config_file::{Mistake, Mistakes, Origin};
use latch_control::settings::{self, ConfigFile, Origins, Overlay, Refused};
use latch_control::{Control, datadir, server};

use crate::serve::{DEFAULT_CONFIG_PATH, NOT_IN_FILE, ServeArgs, Tls};

/// The Latch control plane: enrolls hosts, queues account jobs and hands them to agents.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Serve the API. The first start creates the data directory, the database (SQLite in the
    /// data directory, or the tables in PostgreSQL with --database-url), the keys (job signing,
    /// audit, private CA) and an admin token in DIR/admin.token (mode 0600). Later starts refuse
    /// to run if a key is missing or differs from the one recorded then.
    Serve(ServeArgs),
    /// The configuration file (/etc/latch/control.toml; every key in packaging/control.toml).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Rotate the credential vault's master key, with the server stopped: a new key re-wraps
    /// every organization's data key in one transaction (audited), then replaces the master key
    /// file (DIR/master.key or --master-key-file). An interrupted rotation is finished or undone
    /// at the next start. Back up the new key at once: the old one no longer opens the database.
    RotateMasterKey {
        /// The data directory the server runs with.
        #[arg(long, default_value = "./latch-data", env = "LATCH_DATA_DIR")]
        data_dir: PathBuf,
        /// The server's PostgreSQL database, if it uses one (postgres://USER@HOST:PORT/DATABASE;
        /// the password in PGPASSWORD or ~/.pgpass, or the whole URL in LATCH_DATABASE_URL).
        #[arg(long, env = "LATCH_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// The master key file the server runs with. Default: DIR/master.key.
        #[arg(long, env = "LATCH_MASTER_KEY_FILE")]
        master_key_file: Option<PathBuf>,
    },
    /// Move a control plane from SQLite to PostgreSQL: copy every row of DIR/latch.db into the
    /// empty PostgreSQL database of --database-url, in one transaction, then mark latch.db as
    /// moved (it is refused from then on). Stop the server first. Afterwards start it with the
    /// same --data-dir (keys and admin token stay there) and --database-url; agents notice
    /// nothing.
    CopyToPostgres {
        /// The data directory the SQLite control plane ran with.
        #[arg(long, default_value = "./latch-data", env = "LATCH_DATA_DIR")]
        data_dir: PathBuf,
        /// The PostgreSQL database to fill (postgres://USER@HOST:PORT/DATABASE; an empty
        /// database or schema). The password goes in PGPASSWORD or ~/.pgpass, or the whole URL
        /// in LATCH_DATABASE_URL.
        #[arg(long, env = "LATCH_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check the configuration as `serve` would take it — the file (--config, or
    /// /etc/latch/control.toml if it exists), the environment's LATCH_<OPTION> variables and
    /// the options given here, which take serve's options — without starting anything or
    /// opening the data directory or the database. Prints "FILE: ok" and every option's
    /// effective value with where it came from (the file's line, the environment, the command
    /// line or the default; secrets only as the files that hold them); or each mistake as
    /// FILE:LINE:COLUMN (or the variable or flag) with what to write instead. Exit status 0
    /// when the configuration is valid, 1 when it is not.
    Check(ServeArgs),
}

/// What `serve` and `config check` run with: the options from every source, and where each
/// came from.
struct Settled {
    /// The options.
    args: ServeArgs,
    /// Where each came from.
    origins: Origins,
    /// The configuration file read, if any.
    file: Option<PathBuf>,
    /// Every option's effective value, one line each (secrets masked).
    effective: Vec<String>,
    /// Mistakes in the file's entries (left out of `args`).
    mistakes: Vec<Mistake>,
}

impl Settled {
    /// Resolves the options, with every mistake: the file's and the values'.
    fn resolve(self) -> Result<(serve::Resolved, Option<PathBuf>, Vec<String>), Mistakes> {
        let mut mistakes = self.mistakes;
        let resolved = self.args.resolve(&self.origins);
        if let Err(more) = &resolved {
            mistakes.extend(more.0.iter().cloned());
        }
        match resolved {
            Ok(resolved) if mistakes.is_empty() => Ok((resolved, self.file, self.effective)),
            _ => Err(Mistakes::in_order(mistakes)),
        }
    }
}

/// Why the options could not be settled.
enum Unsettled {
    /// Mistakes, each pointing at its source.
    Mistakes(Mistakes),
    /// Clap's complaint about the command line or the environment.
    Clap(clap::Error),
}

impl From<Mistakes> for Unsettled {
    fn from(mistakes: Mistakes) -> Unsettled {
        Unsettled::Mistakes(mistakes)
    }
}

/// Parses the command line. A complaint about relations between options (one requires
/// another, two conflict) waits for the final parse, where the configuration file counts.
fn first_parse(argv: &[OsString]) -> Result<ArgMatches, clap::Error> {
    use clap::error::ErrorKind;
    match Cli::command().try_get_matches_from(argv) {
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::ArgumentConflict | ErrorKind::MissingRequiredArgument
            ) =>
        {
            settings::relaxed(Cli::command()).try_get_matches_from(argv)
        }
        parsed => parsed,
    }
}

/// The matches of the subcommand at `path` (`["serve"]` or `["config", "check"]`).
fn subcommand_at<'a>(matches: &'a ArgMatches, path: &[&str]) -> Result<&'a ArgMatches, Unsettled> {
    path.iter().try_fold(matches, |matches, name| {
        matches.subcommand_matches(name).ok_or_else(|| {
            Unsettled::Clap(clap::Error::raw(
                clap::error::ErrorKind::InvalidSubcommand,
                format!("expected the subcommand {name}"),
            ))
        })
    })
}

/// The configuration file the subcommand at `path` reads: the one named (`--config`,
/// `LATCH_CONFIG`), else the default one if it exists.
fn config_file(first: &ArgMatches, path: &[&str]) -> Option<PathBuf> {
    let named = subcommand_at(first, path)
        .ok()
        .and_then(|sub| sub.get_one::<PathBuf>("config").cloned());
    named.or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG_PATH);
        default.exists().then_some(default)
    })
}

/// Brings together the options of the subcommand at `path` from `argv` (`first`: its first
/// parse): the configuration file under the environment under the command line.
fn settle(argv: &[OsString], path: &[&str], first: &ArgMatches) -> Result<Settled, Unsettled> {
    let cli = Cli::command();
    let command = path
        .iter()
        .try_fold(&cli, |command, name| command.find_subcommand(name))
        .ok_or_else(|| {
            Unsettled::Clap(clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))
        })?;
    // The real arguments: the program and the subcommand names, then the subcommand's own.
    let depth = 1 + path.len();
    if argv.len() < depth
        || argv[1..depth]
            .iter()
            .zip(path)
            .any(|(word, name)| word != name)
    {
        return Err(Unsettled::Clap(clap::Error::raw(
            clap::error::ErrorKind::InvalidSubcommand,
            "options go after the subcommand",
        )));
    }
    let file = match config_file(first, path) {
        Some(path) => Some(ConfigFile::read(&path)?),
        None => None,
    };
    let (overlay, mut mistakes) = match &file {
        Some(file) => settings::overlay(command, subcommand_at(first, path)?, file, NOT_IN_FILE),
        None => (Overlay::default(), Vec::new()),
    };
    let matches = match settings::reparse(&cli, &argv[..depth], &overlay, &argv[depth..]) {
        Ok(matches) => matches,
        Err(Refused::File(more)) => {
            mistakes.extend(more.0);
            return Err(Unsettled::Mistakes(Mistakes::in_order(mistakes)));
        }
        Err(Refused::Clap(error)) if mistakes.is_empty() => return Err(Unsettled::Clap(error)),
        Err(Refused::Clap(_)) => return Err(Unsettled::Mistakes(Mistakes::in_order(mistakes))),
    };
    let sub = subcommand_at(&matches, path)?;
    let args = ServeArgs::from_arg_matches(sub).map_err(Unsettled::Clap)?;
    let origins = Origins::new(command, sub, &overlay, NOT_IN_FILE);
    let effective =
        settings::effective_values(command, sub, &origins, NOT_IN_FILE, &|id, value| {
            if id == "database_url" {
                serve::masked_url(&value)
            } else {
                value
            }
        });
    Ok(Settled {
        args,
        origins,
        file: file.map(|file| file.path),
        effective,
        mistakes,
    })
}

/// Prints each mistake, and a summary (naming the configuration file, if one was read).
fn report_mistakes(mistakes: &Mistakes, file: Option<&Path>) {
    for mistake in &mistakes.0 {
        eprintln!("{mistake}");
    }
    let what = file.map_or_else(
        || "the configuration".to_owned(),
        |f| f.display().to_string(),
    );
    eprintln!(
        "{what}: not valid ({} mistake(s)); nothing was started",
        mistakes.0.len()
    );
}

/// Settles and resolves the options of the subcommand at `path`, or reports why not (and
/// exits with clap's status for clap's own complaints).
fn settle_or_report(
    argv: &[OsString],
    path: &[&str],
    first: &ArgMatches,
) -> Option<(serve::Resolved, Option<PathBuf>, Vec<String>)> {
    let settled = settle(argv, path, first).and_then(|settled| Ok(settled.resolve()?));
    match settled {
        Ok(resolved) => Some(resolved),
        Err(Unsettled::Mistakes(mistakes)) => {
            report_mistakes(&mistakes, config_file(first, path).as_deref());
            None
        }
        // `config check` exits 1 on any mistake.
        Err(Unsettled::Clap(error)) if path[0] == "config" => {
            let _ = error.print();
            None
        }
        Err(Unsettled::Clap(error)) => error.exit(),
    }
}

/// `latch-control config check`.
fn check(argv: &[OsString], first: &ArgMatches) -> ExitCode {
    let Some((_, file, effective)) = settle_or_report(argv, &["config", "check"], first) else {
        return ExitCode::FAILURE;
    };
    match file {
        Some(file) => println!("{}: ok", file.display()),
        None => println!(
            "{DEFAULT_CONFIG_PATH}: not found; the built-in defaults apply, under the environment and the command line"
        ),
    }
    println!("effective values:");
    for line in effective {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// Reports clap's complaint about the command line or the environment and gives the exit status
/// (`config check`: 1 for any mistake; help and version: 0).
fn refused(argv: &[OsString], error: &clap::Error, checking: bool) -> ExitCode {
    if let Some(name) = settings::refused_variable(&Cli::command(), error, argv) {
        eprintln!("environment {name}: {}", settings::clap_message(error));
        return ExitCode::from(if checking { 1 } else { 2 });
    }
    if checking && error.use_stderr() {
        let _ = error.print();
        return ExitCode::FAILURE;
    }
    error.exit()
}

#[tokio::main]
async fn main() -> ExitCode {
    // One crypto provider for every rustls user in the process (the TLS listener, webhook
    // deliveries, the identity provider client): reqwest panics without one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let checking = argv.get(1).is_some_and(|word| word == "config");
    let first = match first_parse(&argv) {
        Ok(matches) => matches,
        Err(error) => return refused(&argv, &error, checking),
    };
    if checking {
        return check(&argv, &first);
    }
    let outcome = match first.subcommand() {
        Some(("serve", _)) => match settle_or_report(&argv, &["serve"], &first) {
            Some((resolved, file, _)) => serve(resolved, file).await,
            None => return ExitCode::FAILURE,
        },
        _ => other(&first).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The subcommands other than `serve` and `config`.
async fn other(matches: &ArgMatches) -> anyhow::Result<()> {
    let sub = matches
        .subcommand()
        .map(|(_, sub)| sub)
        .context("no subcommand")?;
    let cli = match Cli::from_arg_matches(matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    match cli.command {
        Command::RotateMasterKey {
            data_dir,
            database_url,
            master_key_file,
        } => {
            let database = match database_url {
                None => datadir::Database::Sqlite,
                Some(url) => {
                    refuse_password_on_command_line(&url, sub)?;
                    datadir::Database::Postgres(url)
                }
            };
            let options = datadir::Options {
                database,
                master_key_file,
                ..datadir::Options::default()
            };
            let mut data = datadir::open(&data_dir, &options).await?;
            let rotated = data.rotate_master_key().await?;
            println!(
                "Rotated the master key {} -> {}: {} organization data key(s) re-wrapped.",
                rotated.from, rotated.to, rotated.organizations
            );
            println!(
                "{} holds the new key now; back it up apart from the database. The old key no longer opens this database (keep it only as long as you keep database backups made before now).",
                data.master_key_files.path().display()
            );
            Ok(())
        }
        Command::CopyToPostgres {
            data_dir,
            database_url,
        } => {
            refuse_password_on_command_line(&database_url, sub)?;
            let copied = datadir::copy_to_postgres(&data_dir, &database_url).await?;
            println!(
                "Copied {} to PostgreSQL {}:",
                data_dir.join(datadir::DATABASE_FILE).display(),
                copied.location
            );
            for (table, rows) in &copied.rows {
                println!("  {table:<14} {rows} rows");
            }
            println!(
                "  audit chain:   the same, through entry {}",
                copied.audit_head.unwrap_or(0)
            );
            println!(
                "{} now refuses to start on SQLite. Start the server with the same --data-dir and --database-url (or LATCH_DATABASE_URL).",
                data_dir.display()
            );
            Ok(())
        }
        Command::Serve(_) | Command::Config { .. } => {
            anyhow::bail!("internal error: serve and config are handled apart")
        }
    }
}

/// `latch-control serve`.
async fn serve(resolved: serve::Resolved, file: Option<PathBuf>) -> anyhow::Result<()> {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(resolved.log_filter)
        .with_writer(std::io::stderr);
    match resolved.log_format {
        serve::LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        // Colours only on a terminal: a log file or the journal gets plain text.
        serve::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let data_dir = resolved.data_dir;
    let data = datadir::open(&data_dir, &resolved.options).await?;
    // Every connected agent holds a socket during its long-poll: lift the soft limit on
    // open files (often 1024) to the hard one.
    let open_files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    println!("Latch control plane");
    match &file {
        Some(file) => println!("  configuration:  {}", file.display()),
        None => println!("  configuration:  no file (defaults, environment, command line)"),
    }
    println!("  data directory: {}", data_dir.display());
    println!("  database:       {}", data.database);
    println!(
        "  master key:     {} ({}; back it up apart from the database)",
        data.master_key_files.path().display(),
        data.master_key.id()
    );
    if data.admin_token_created {
        println!(
            "  admin token:    created {} (mode 0600); latchctl reads it from there or from --token",
            data.admin_token_path.display()
        );
    } else {
        println!("  admin token:    {}", data.admin_token_path.display());
    }
    let config = resolved.config;
    println!(
        "  open files:     {open_files} at most, about one per connected agent (raise the hard limit, e.g. LimitNOFILE= in the unit, for more)"
    );
    println!(
        "  grants:         at most {}; {} when no end is given (--max-grant-duration, --default-grant-duration)",
        format_window(config.max_grant_duration),
        format_window(config.default_grant_duration)
    );
    println!(
        "  signing key:    {} (Ed25519; agents pin its public key at enrollment)",
        data_dir.join(server::SIGNING_KEY_FILE).display()
    );
    println!(
        "  audit key:      {} (keep a backup; checkpoints: latchctl audit checkpoint)",
        data_dir.join(datadir::AUDIT_KEY_FILE).display()
    );
    let tls = match resolved.tls {
        Tls::Off => {
            println!("  TLS:            OFF (--insecure-http; loopback only, for development)");
            None
        }
        Tls::Files { cert, identity } => {
            println!(
                "  TLS:            certificate {} (agents pin its issuing CA)",
                cert.display()
            );
            Some(identity)
        }
        Tls::PrivateCa(names) => {
            println!(
                "  TLS:            CA {} (latchctl: --ca-file); agents pin its fingerprint",
                data_dir.join(datadir::CA_CERT_FILE).display()
            );
            Some(data.private_ca(&names).await?)
        }
    };
    if let Some(identity) = &tls {
        println!("  CA fingerprint: {}", identity.ca_fingerprint);
    }
    println!("  SSH user CA:    {}", data.user_ca.fingerprint());
    let mut control = Control::new(data.store, config, data.signer)
        .with_key_dir(data_dir.clone(), data.next_signer)
        .with_master_key(data.master_key.clone())
        .with_user_ca(data.user_ca);
    if let Some(sso) = resolved.sso {
        println!("  single sign-on: {}", sso.config().issuer);
        control = control.with_sso(sso);
    }
    let tls = match tls {
        Some(identity) => {
            control = control.with_ca_fingerprint(identity.ca_fingerprint);
            Some(identity.server_config)
        }
        None => None,
    };
    let listener = server::bind(resolved.listen, tls.is_some()).await?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("  listening on {scheme}://{addr}");
    server::run(Arc::new(control), listener, tls, shutdown_signal()).await?;
    println!("stopped");
    Ok(())
}

/// Refuses a database URL with a password on the command line (`matches`: the subcommand's).
fn refuse_password_on_command_line(url: &str, matches: &ArgMatches) -> anyhow::Result<()> {
    let origin = match matches.value_source("database_url") {
        Some(ValueSource::CommandLine) => Origin::CommandLine("--database-url".into()),
        _ => Origin::Env("LATCH_DATABASE_URL".into()),
    };
    serve::refuse_visible_password(url, &origin).map_err(|(_, message)| anyhow::anyhow!(message))
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options of `serve` a file may set.
    fn settable() -> Vec<(String, Option<String>)> {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        settings::settable(serve, NOT_IN_FILE)
            .map(|arg| {
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                (settings::key(arg).unwrap(), env)
            })
            .collect()
    }

    #[test]
    fn the_reference_file_documents_every_option() {
        let reference = include_str!("../../../packaging/control.toml");
        let options = settable();
        assert!(options.len() >= 35, "{options:?}");
        for (key, _) in &options {
            assert!(
                reference.contains(&format!("\n# {key} = ")),
                "packaging/control.toml does not document `{key}`"
            );
        }
        // Nothing documented that does not exist.
        for line in reference.lines() {
            if let Some((key, _)) = line.strip_prefix("# ").and_then(|l| l.split_once(" = ")) {
                assert!(
                    options.iter().any(|(known, _)| known == key),
                    "packaging/control.toml documents `{key}`, which no option has"
                );
            }
        }
    }

    #[test]
    fn every_option_has_its_environment_variable() {
        for (key, env) in settable() {
            assert_eq!(
                env,
                Some(format!("LATCH_{}", key.to_ascii_uppercase())),
                "--{}",
                key.replace('_', "-")
            );
        }
        // The recovery flags are for one start: neither in the file nor in the environment.
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        for id in &NOT_IN_FILE[1..] {
            let arg = serve.get_arguments().find(|a| a.get_id() == *id).unwrap();
            assert_eq!(arg.get_env(), None, "{id}");
        }
    }
}
