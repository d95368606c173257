//! Parsers for `/etc/passwd`, `/etc/group`, `/etc/shadow` and `/etc/shells`, kept apart from the
//! reading so they can be tested on inline data and fuzzed.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why an account file could not be read or parsed.
#[derive(Debug, Error)]
pub enum EtcError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{file} line {line}: {reason}")]
    Parse {
        /// Which file kind.
        file: &'static str,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// GECOS field.
    pub gecos: String,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Supplementary members.
    pub members: Vec<String>,
}

/// One `/etc/shadow` entry (the fields Latch reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowEntry {
    /// Login name.
    pub name: String,
    /// Password hash (or `!`, `*`, …).
    pub hash: String,
    /// Account expiry, days since the epoch.
    pub expire_days: Option<i64>,
}

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        // NIS compat entries ("+", "-name") are not local accounts.
        .filter(|(_, line)| !line.starts_with('+') && !line.starts_with('-'))
}

fn fields<'a>(
    file: &'static str,
    line: usize,
    text: &'a str,
    count: usize,
) -> Result<Vec<&'a str>, EtcError> {
    let fields: Vec<&str> = text.split(':').collect();
    if fields.len() != count {
        return Err(EtcError::Parse {
            file,
            line,
            reason: format!("expected {count} fields, found {}", fields.len()),
        });
    }
    if fields[0].is_empty() {
        return Err(EtcError::Parse {
            file,
            line,
            reason: "empty name".into(),
        });
    }
    Ok(fields)
}

fn id(file: &'static str, line: usize, text: &str) -> Result<u32, EtcError> {
    text.parse().map_err(|_| EtcError::Parse {
        file,
        line,
        reason: format!("{text:?} is not a numeric id"),
    })
}

fn passwd_line(n: usize, line: &str) -> Result<PasswdEntry, EtcError> {
    let f = fields("passwd", n, line, 7)?;
    Ok(PasswdEntry {
        name: f[0].to_owned(),
        uid: id("passwd", n, f[2])?,
        gid: id("passwd", n, f[3])?,
        gecos: f[4].to_owned(),
        home: f[5].to_owned(),
        shell: f[6].to_owned(),
    })
}

fn group_line(n: usize, line: &str) -> Result<GroupEntry, EtcError> {
    let f = fields("group", n, line, 4)?;
    Ok(GroupEntry {
        name: f[0].to_owned(),
        gid: id("group", n, f[2])?,
        members: f[3]
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn shadow_line(n: usize, line: &str) -> Result<ShadowEntry, EtcError> {
    let f = fields("shadow", n, line, 9)?;
    let expire_days = if f[7].is_empty() {
        None
    } else {
        Some(f[7].parse().map_err(|_| EtcError::Parse {
            file: "shadow",
            line: n,
            reason: format!("expiry {:?} is not a number", f[7]),
        })?)
    };
    Ok(ShadowEntry {
        name: f[0].to_owned(),
        hash: f[1].to_owned(),
        expire_days,
    })
}

/// Parses every line with `parse`: the entries that parse, and an error for each line that
/// does not (revocation works from what parses; granting refuses while any error is left).
fn parse_lenient<T>(
    text: &str,
    parse: fn(usize, &str) -> Result<T, EtcError>,
) -> (Vec<T>, Vec<EtcError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in lines(text) {
        match parse(n, line) {
            Ok(entry) => entries.push(entry),
            Err(error) => errors.push(error),
        }
    }
    (entries, errors)
}

/// Parses `/etc/passwd` text; the first malformed line is an error (tests and fuzzing; the
/// agent reads through [`Snapshot::read`]).
#[cfg(any(test, fuzzing))]
pub fn parse_passwd(text: &str) -> Result<Vec<PasswdEntry>, EtcError> {
    lines(text).map(|(n, line)| passwd_line(n, line)).collect()
}

/// Parses `/etc/group` text; the first malformed line is an error (tests and fuzzing; the
/// agent reads through [`Snapshot::read`]).
#[cfg(any(test, fuzzing))]
pub fn parse_group(text: &str) -> Result<Vec<GroupEntry>, EtcError> {
    lines(text).map(|(n, line)| group_line(n, line)).collect()
}

/// Parses `/etc/shadow` text; the first malformed line is an error (tests and fuzzing; the
/// agent reads through [`Snapshot::read`]).
#[cfg(any(test, fuzzing))]
pub fn parse_shadow(text: &str) -> Result<Vec<ShadowEntry>, EtcError> {
    lines(text).map(|(n, line)| shadow_line(n, line)).collect()
}

/// Parses `/etc/shells`: one absolute path per line.
pub fn parse_shells(text: &str) -> Vec<String> {
    lines(text)
        .map(|(_, line)| line.trim())
        .filter(|line| line.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

/// The account files as read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `/etc/passwd` (the lines that parse).
    pub passwd: Vec<PasswdEntry>,
    /// `/etc/group` (the lines that parse).
    pub group: Vec<GroupEntry>,
    /// `/etc/shadow` (the lines that parse).
    pub shadow: Vec<ShadowEntry>,
    /// `/etc/shells`.
    pub shells: Vec<String>,
    /// Lines of passwd, group or shadow that do not parse, as `/etc/FILE line N: why`.
    pub malformed: Vec<String>,
    /// The names (first field) of `/etc/passwd` lines that do not parse: such an account still
    /// exists for the system tools, so it is never taken for gone.
    pub malformed_users: Vec<String>,
}

impl Snapshot {
    /// Reads the files under `etc` (normally `/etc`). A malformed line does not fail the read: it
    /// is left out and listed in `malformed`, so revocation can go on while granting refuses.
    pub fn read(etc: &Path) -> Result<Snapshot, EtcError> {
        let read = |name: &str| {
            let path = etc.join(name);
            std::fs::read_to_string(&path).map_err(|source| EtcError::Read { path, source })
        };
        let passwd_text = read("passwd")?;
        let (passwd, passwd_errors) = parse_lenient(&passwd_text, passwd_line);
        let malformed_users = passwd_errors
            .iter()
            .filter_map(|error| match error {
                EtcError::Parse { line, .. } => passwd_text.lines().nth(line - 1),
                EtcError::Read { .. } => None,
            })
            .filter_map(|line| line.split(':').next())
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        let (group, group_errors) = parse_lenient(&read("group")?, group_line);
        let (shadow, shadow_errors) = parse_lenient(&read("shadow")?, shadow_line);
        let malformed = passwd_errors
            .into_iter()
            .chain(group_errors)
            .chain(shadow_errors)
            .map(|error| match error {
                EtcError::Parse { file, line, reason } => {
                    format!("{} line {line}: {reason}", etc.join(file).display())
                }
                other => other.to_string(),
            })
            .collect();
        Ok(Snapshot {
            passwd,
            group,
            shadow,
            shells: read("shells").map(|t| parse_shells(&t)).unwrap_or_default(),
            malformed,
            malformed_users,
        })
    }

    /// The passwd entry of `name`.
    pub fn user(&self, name: &str) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|u| u.name == name)
    }

    /// The group entry of `name`.
    pub fn group(&self, name: &str) -> Option<&GroupEntry> {
        self.group.iter().find(|g| g.name == name)
    }

    /// The shadow entry of `name`.
    pub fn shadow(&self, name: &str) -> Option<&ShadowEntry> {
        self.shadow.iter().find(|s| s.name == name)
    }

    /// Whether `user` is a supplementary member of `group`.
    pub fn is_member(&self, user: &str, group: &str) -> bool {
        self.group(group)
            .is_some_and(|g| g.members.iter().any(|m| m == user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd() {
        let text = "root:x:0:0:root:/root:/bin/bash\n\nalice:x:60000:60000:latch-managed:/home/alice:/bin/bash\n+::::::\n";
        let users = parse_passwd(text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(
            users[1],
            PasswdEntry {
                name: "alice".into(),
                uid: 60000,
                gid: 60000,
                gecos: "latch-managed".into(),
                home: "/home/alice".into(),
                shell: "/bin/bash".into(),
            }
        );
    }

    #[test]
    fn parses_group_members() {
        let groups = parse_group("sudo:x:27:alice,bob\nempty:x:100:\n").unwrap();
        assert_eq!(groups[0].members, vec!["alice", "bob"]);
        assert!(groups[1].members.is_empty());
        let snapshot = Snapshot {
            group: groups,
            ..Snapshot::default()
        };
        assert!(snapshot.is_member("bob", "sudo"));
        assert!(!snapshot.is_member("bo", "sudo"));
        assert!(!snapshot.is_member("bob", "empty"));
    }

    #[test]
    fn parses_shadow_expiry() {
        let shadow =
            parse_shadow("alice:$6$s$h:20000:0:99999:7::20500:\nbob:!:20000:0:99999:7:::\n")
                .unwrap();
        assert_eq!(shadow[0].hash, "$6$s$h");
        assert_eq!(shadow[0].expire_days, Some(20500));
        assert_eq!(shadow[1].expire_days, None);
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        let err = parse_passwd("root:x:0:0:root:/root:/bin/bash\nbroken:x:1\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(parse_passwd("a:x:notanumber:0:::/bin/sh\n").is_err());
        assert!(parse_group(":x:1:\n").is_err());
        assert!(parse_shadow("a:b:c\n").is_err());
    }

    #[test]
    fn a_malformed_line_is_listed_and_the_rest_still_read() {
        let dir = std::env::temp_dir().join(format!("latch-etc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\ngarbage without fields\neph:x:60000:60000::/home/eph:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.join("group"), "sudo:x:27:eph\n").unwrap();
        std::fs::write(dir.join("shadow"), "eph:!:1::::::\n").unwrap();
        let snapshot = Snapshot::read(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(snapshot.passwd.len(), 2);
        assert!(snapshot.user("eph").is_some());
        assert_eq!(snapshot.malformed.len(), 1);
        assert!(
            snapshot.malformed[0].ends_with("passwd line 2: expected 7 fields, found 1"),
            "{:?}",
            snapshot.malformed
        );
    }

    #[test]
    fn shells_are_absolute_paths() {
        assert_eq!(
            parse_shells("# comment\n/bin/sh\n/usr/bin/bash\nnot-a-path\n"),
            vec!["/bin/sh", "/usr/bin/bash"]
        );
    }
}
