//! Docs that point where they should: every relative link in a Markdown file
//! of the repository leads to a file that exists, and every file a doc
//! comment names (a path in backticks, ending in .rs, .md, …) exists, counted from the
//! repository, the comment's crate or source folder, or the comment's own
//! folder. `.ci/run` runs this first.

use std::path::Path;
use std::path::PathBuf;

/// Folders never searched: build output and installed third-party code.
const SKIP: &[&str] = &["target", "node_modules", ".git", ".cargo"];
/// Extensions that make a backticked word in a doc comment a file name.
const FILE_KINDS: &[&str] = &[".rs", ".md", ".toml", ".js", ".css", ".html", ".sh", ".png", ".svg"];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !SKIP.contains(&name.as_str()) {
                files(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

/// The targets of `](target)` links in Markdown text.
fn markdown_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            links.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
    }
    links
}

/// Backticked words in `//!` and `///` lines that name files.
fn doc_file_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if !(t.starts_with("//!") || t.starts_with("///")) {
            continue;
        }
        for (i, part) in t.split('`').enumerate() {
            let is_path = part.chars().all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c));
            if i % 2 == 1 && is_path && part.contains('/') && FILE_KINDS.iter().any(|k| part.ends_with(k)) {
                names.push(part.to_string());
            }
        }
    }
    names
}

/// The places a doc comment of `file` may count a path from.
fn bases(root: &Path, file: &Path) -> Vec<PathBuf> {
    let mut bases = vec![root.to_path_buf()];
    let mut dir = file.parent();
    while let Some(d) = dir {
        bases.push(d.to_path_buf());
        if d.join("Cargo.toml").exists() || d == root {
            break;
        }
        dir = d.parent();
    }
    bases
}

#[test]
fn relative_links_and_named_files_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    files(root, &mut all);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &all {
        let Some(ext) = file.extension().and_then(|e| e.to_str()) else { continue };
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        let shown = file.strip_prefix(root).unwrap_or(file).display().to_string();
        match ext {
            "md" => {
                for link in markdown_links(&text) {
                    let target = link.split('#').next().unwrap_or("").split_whitespace().next().unwrap_or("");
                    if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                        continue;
                    }
                    checked += 1;
                    let dir = file.parent().unwrap_or(root);
                    if !dir.join(target).exists() {
                        broken.push(format!("{shown}: link to {target}"));
                    }
                }
            }
            "rs" => {
                for name in doc_file_names(&text) {
                    checked += 1;
                    if !bases(root, file).iter().any(|b| b.join(&name).exists()) {
                        broken.push(format!("{shown}: doc comment names {name}"));
                    }
                }
            }
            _ => {}
        }
    }
    eprintln!("{checked} links and file names checked");
    assert!(checked > 10, "the checker found almost nothing to check ({checked}): is it looking in the right place?");
    assert!(broken.is_empty(), "{} broken:\n{}", broken.len(), broken.join("\n"));
}

#[test]
fn the_checker_catches_what_it_must() {
    assert_eq!(markdown_links("see [a](docs/x.md#y) and [b](https://e.org)"), vec!["docs/x.md#y", "https://e.org"]);
    let names =
        doc_file_names("//! In `node/src/ws.rs` and `a.rs`, not `x/y`.\n// `not/a/doc.rs`\n/// `docs/protocol.md`");
    assert_eq!(names, vec!["node/src/ws.rs", "docs/protocol.md"]);
}
