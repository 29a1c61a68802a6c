//! Conventions checked on the whole tree: every Rust source file opens with a `//!` doc saying
//! what it owns, the README shows the two commands, CI calls the test command.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !matches!(
                name.as_ref(),
                "target" | "node_modules" | "gen" | ".venv" | "corpus" | "artifacts"
            ) {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_has_a_module_doc() {
    let root = outpost_tests::repo_root();
    let mut files = Vec::new();
    for dir in ["shared", "agent", "control", "ui", "tests", "xtask", "cross"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} Rust files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let first =
                text.lines().find(|l| !l.trim().is_empty() && !l.starts_with("#!")).unwrap_or("");
            !first.starts_with("//!")
        })
        .map(|p| p.strip_prefix(&root).unwrap_or(p).display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a `//!` module doc: {missing:#?}");
}

#[test]
fn readme_shows_the_two_commands_and_ci_runs_the_test_command() {
    let root = outpost_tests::repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let first_screen: String = readme.lines().take(30).collect::<Vec<_>>().join("\n");
    for command in ["cargo xtask demo", "cargo xtask test"] {
        assert!(first_screen.contains(command), "README's first screen lacks `{command}`");
    }
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(ci.contains("cargo xtask test"), ".ci/run must call the README's test command");
    assert!(root.join("ARCHITECTURE.md").exists());
}
