//! Mount points, read from `/proc/self/mountinfo` (never by touching the mounted file system:
//! a user's FUSE mount can block any access to it for ever).

use std::path::{Path, PathBuf};

/// Un-escapes a mountinfo path field (`\040` is a space, `\011` a tab, …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points listed in mountinfo `text`.
pub fn parse_mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect()
}

/// Mount points at or below `dir` (e.g. a FUSE file system a user mounted on `~/.ssh`).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    parse_mount_points(&text)
        .into_iter()
        .filter(|point| point.starts_with(dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mount_points_with_escaped_names() {
        let text = "36 35 98:0 / / rw - ext4 /dev/root rw\n\
                    40 36 0:45 / /home/eve/.ssh rw,nosuid - fuse.sshfs eve@x: rw\n\
                    41 36 0:46 / /home/eve/my\\040dir rw - tmpfs tmpfs rw\n";
        let points = parse_mount_points(text);
        assert_eq!(
            points,
            vec![
                PathBuf::from("/"),
                PathBuf::from("/home/eve/.ssh"),
                PathBuf::from("/home/eve/my dir")
            ]
        );
        let under: Vec<PathBuf> = points
            .into_iter()
            .filter(|p| p.starts_with("/home/eve"))
            .collect();
        assert_eq!(under.len(), 2);
        assert!(!Path::new("/home/evelyn").starts_with("/home/eve"));
        assert_eq!(
            mounts_under(Path::new("/no/such/dir/latch")),
            Vec::<PathBuf>::new()
        );
    }
}
