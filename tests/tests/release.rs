//! Release hygiene, checked on the built binary and the checkout: the version names its commit,
//! the licence file is the licence `Cargo.toml` declares, the changelog covers this version, and
//! no placeholder address is left in what ships.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, ensure};
use mxfleet_testkit::binary;

/// The checkout's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The `[workspace.package]` value of `key` in the root `Cargo.toml`.
fn workspace_key(key: &str) -> Result<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let prefix = format!("{key} = \"");
    manifest
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.strip_suffix('"'))
        .map(str::to_owned)
        .with_context(|| format!("no {key} in Cargo.toml"))
}

#[test]
fn the_version_names_the_commit_it_was_built_from() -> Result<()> {
    let output = Command::new(binary()).arg("--version").output()?;
    ensure!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout)?;
    let version = workspace_key("version")?;
    ensure!(
        printed.starts_with(&format!("mxfleet {version} (")),
        "{printed}"
    );
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output()
        .ok();
    // In a git checkout (CI's clean clone), the commit is HEAD's.
    if let Some(git) = git.filter(|g| g.status.success())
        && std::env::var_os("MXFLEET_BIN").is_none()
    {
        let head = String::from_utf8(git.stdout)?;
        ensure!(
            printed.trim_end() == format!("mxfleet {version} ({})", head.trim()),
            "{printed:?} is not built from HEAD {head:?}"
        );
    }
    Ok(())
}

#[test]
fn the_licence_file_is_the_licence_cargo_declares_and_the_changelog_has_this_version() -> Result<()>
{
    ensure!(workspace_key("license")? == "Apache-2.0");
    let licence = std::fs::read_to_string(root().join("LICENSE"))?;
    ensure!(
        licence.contains("Apache License") && licence.contains("Version 2.0, January 2004"),
        "LICENSE is not the Apache License 2.0"
    );
    ensure!(
        licence.contains("END OF TERMS AND CONDITIONS"),
        "LICENSE is cut short"
    );
    let changelog = std::fs::read_to_string(root().join("CHANGELOG.md"))?;
    let version = workspace_key("version")?;
    ensure!(
        changelog.contains(&format!("## [{version}]")) || changelog.contains("## [Unreleased]"),
        "CHANGELOG.md has no section for {version}"
    );
    Ok(())
}

#[test]
fn nothing_that_ships_points_at_a_placeholder_address() -> Result<()> {
    let mut offenders = Vec::new();
    let mut dirs = vec![
        root().join("deploy"),
        root().join("docs"),
        root().join("config"),
    ];
    let mut files = vec![root().join("Cargo.toml"), root().join("README.md")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if text.contains("example.invalid") || text.contains("your-org") {
            offenders.push(file.display().to_string());
        }
    }
    ensure!(offenders.is_empty(), "placeholders in {offenders:?}");
    Ok(())
}
