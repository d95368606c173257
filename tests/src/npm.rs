//! The Node.js packages the tests run, each a directory `tests/NAME` with a `package.json` and a
//! committed `package-lock.json`: `tests/oidc` (an OpenID Connect provider, for the SSO tests of
//! `control/tests/sso.rs`) and `tests/console` (the browser harness of `tests/src/browser.rs`).
//!
//! `control/tests/support/oidc.rs` includes this file by path (`#[path]`) rather than depending
//! on this crate, so it uses only the standard library.

use std::path::PathBuf;
use std::process::Command;

/// The directory of the package `tests/NAME` (from this crate or from `control/`, whose tests
/// include this file).
pub fn package_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests")
        .join(name)
}

/// Checks that `node` and `npm` run, and installs the package `tests/NAME` with `npm ci` when its
/// `node_modules` is missing or older than its `package-lock.json`; returns the package directory,
/// or why it cannot be used. Test processes run in parallel: the install runs under a file lock.
pub fn install(name: &str) -> Result<PathBuf, String> {
    for tool in ["node", "npm"] {
        let runs = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !runs {
            return Err(format!(
                "{tool} is not installed: tests/{name} needs Node.js 20+ and npm"
            ));
        }
    }
    let dir = package_dir(name);
    let lock = std::fs::File::create(std::env::temp_dir().join(format!("latch-npm-{name}.lock")))
        .map_err(|e| format!("cannot create the npm lock file: {e}"))?;
    lock.lock()
        .map_err(|e| format!("cannot lock the npm lock file: {e}"))?;
    let modified = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    // npm writes node_modules/.package-lock.json at the end of a complete install.
    let installed = modified(dir.join("node_modules/.package-lock.json"));
    let wanted = modified(dir.join("package-lock.json"));
    if installed.is_some() && installed >= wanted {
        return Ok(dir);
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if status.success() {
        Ok(dir)
    } else {
        Err(format!("`npm ci` in {} failed: {status}", dir.display()))
    }
}
