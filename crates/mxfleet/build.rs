//! Records the commit the binary is built from, for `mxfleet --version` and the start-up log.
//!
//! `MXFLEET_COMMIT` in the build's environment wins (an image built from a tarball, without
//! `.git`); otherwise `git rev-parse` is asked; without either the commit is `unknown`. The
//! build script runs again when the checkout's `HEAD` moves.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MXFLEET_COMMIT");
    let commit = std::env::var("MXFLEET_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=MXFLEET_COMMIT={}", commit.trim());
    // Rebuild when HEAD or the branch it points to moves (only files that exist: a missing
    // one would make cargo run this script at every build).
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = ["HEAD", branch.as_deref().unwrap_or("HEAD"), "packed-refs"];
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", name.trim()])
            && std::path::Path::new(path.trim()).exists()
        {
            println!("cargo:rerun-if-changed={}", path.trim());
        }
    }
}

/// `git args`' output, if git ran and succeeded.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8(output.stdout).ok()
}
