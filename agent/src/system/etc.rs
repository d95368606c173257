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

/// Parses `/etc/passwd` text.
pub fn parse_passwd(text: &str) -> Result<Vec<PasswdEntry>, EtcError> {
    lines(text)
        .map(|(n, line)| {
            let f = fields("passwd", n, line, 7)?;
            Ok(PasswdEntry {
                name: f[0].to_owned(),
                uid: id("passwd", n, f[2])?,
                gid: id("passwd", n, f[3])?,
                gecos: f[4].to_owned(),
                home: f[5].to_owned(),
                shell: f[6].to_owned(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text.
pub fn parse_group(text: &str) -> Result<Vec<GroupEntry>, EtcError> {
    lines(text)
        .map(|(n, line)| {
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
        })
        .collect()
}

/// Parses `/etc/shadow` text.
pub fn parse_shadow(text: &str) -> Result<Vec<ShadowEntry>, EtcError> {
    lines(text)
        .map(|(n, line)| {
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
        })
        .collect()
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
    /// `/etc/passwd`.
    pub passwd: Vec<PasswdEntry>,
    /// `/etc/group`.
    pub group: Vec<GroupEntry>,
    /// `/etc/shadow`.
    pub shadow: Vec<ShadowEntry>,
    /// `/etc/shells`.
    pub shells: Vec<String>,
}

impl Snapshot {
    /// Reads the files under `etc` (normally `/etc`).
    pub fn read(etc: &Path) -> Result<Snapshot, EtcError> {
        let read = |name: &str| {
            let path = etc.join(name);
            std::fs::read_to_string(&path).map_err(|source| EtcError::Read { path, source })
        };
        Ok(Snapshot {
            passwd: parse_passwd(&read("passwd")?)?,
            group: parse_group(&read("group")?)?,
            shadow: parse_shadow(&read("shadow")?)?,
            shells: read("shells").map(|t| parse_shells(&t)).unwrap_or_default(),
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
    fn shells_are_absolute_paths() {
        assert_eq!(
            parse_shells("# comment\n/bin/sh\n/usr/bin/bash\nnot-a-path\n"),
            vec!["/bin/sh", "/usr/bin/bash"]
        );
    }
}
