//! Stamps the git commit into `outrider --version` and `outrider_build_info`
//! as `BUILD_GIT_COMMIT`. An explicit `OUTRIDER_COMMIT` wins: the container
//! build passes it as a build argument, since `.git` is not in its context;
//! else the checkout's HEAD; else "unknown".
//!
//! The stamp is not named `OUTRIDER_*`: `cargo run` and `cargo test` put a
//! build script's `rustc-env` values into the program's environment, where
//! outrider refuses unknown `OUTRIDER_*` variables (README's first command
//! failed with "unknown variable OUTRIDER_COMMIT" when it was).

use std::{path::Path, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=OUTRIDER_COMMIT");
    if let Some(commit) = std::env::var("OUTRIDER_COMMIT").ok().filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
        return;
    }
    // Rebuilt when HEAD moves: a checkout rewrites HEAD, a commit the ref it
    // names. Only existing files are watched (a missing one would make
    // cargo rerun this script on every build). In a linked worktree `.git`
    // is a file: HEAD is in the worktree's own git directory and the refs
    // in the common one, so both are asked of git.
    let git_path = |what: &str| {
        Command::new("git")
            .args(["rev-parse", what])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|p| !p.is_empty())
    };
    let git_dir = git_path("--git-dir").unwrap_or_else(|| ".git".to_owned());
    let common_dir = git_path("--git-common-dir").unwrap_or_else(|| git_dir.clone());
    let mut watched = vec![format!("{git_dir}/HEAD"), format!("{common_dir}/packed-refs")];
    if let Ok(head) = std::fs::read_to_string(format!("{git_dir}/HEAD"))
        && let Some(reference) = head.trim().strip_prefix("ref: ")
    {
        watched.push(format!("{common_dir}/{reference}"));
    }
    for path in watched.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()));
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
