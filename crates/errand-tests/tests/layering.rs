//! The workspace's module layering: within each crate (and within its `server`, `broker` and
//! `memory` module groups), no module uses a sibling that uses it back. Found by reading the
//! sources for `crate::<module>` (and `super::<module>` inside a group) paths outside comments.
//! Before the backend seam was redrawn this found seven such pairs (admin <-> broker in
//! errand-core, errand-redis and errand-sqlite; the launcher and four server parts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without `//` comments (doc comments included: links in prose are not imports).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers right after each `prefix` in `code`, including those in `prefix{a, b::c}`.
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let name = ident(part.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The modules directly under `base` (files and directories) and the siblings each one's files
/// refer to, by `crate::` paths (a crate's top level) or `super::` paths (a module group).
fn module_graph(base: &Path, prefix: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(base, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(base).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if ["lib", "main", "mod"].contains(&module.as_str()) {
            continue;
        }
        let text = code(&std::fs::read_to_string(&file).unwrap());
        let mut refs = names_after(&text, prefix);
        if prefix == "super::" && rel.components().count() > 1 {
            // A file nested one level deeper reaches its group's siblings through `super::super`.
            refs = names_after(&text, "super::super::");
        }
        refs.remove(&module);
        graph.entry(module).or_default().extend(refs);
    }
    graph
}

#[test]
fn no_module_uses_a_sibling_that_uses_it_back() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let groups = [
        ("errand-core/src", "crate::"),
        ("errand-core/src/broker", "super::"),
        ("errand-redis/src", "crate::"),
        ("errand-sqlite/src", "crate::"),
        ("errand/src", "crate::"),
        ("errand/src/server", "super::"),
        ("errand-testing/src", "crate::"),
        ("errand-testing/src/memory", "super::"),
        ("errand-web/src", "crate::"),
        ("errand-cli/src", "crate::"),
    ];
    let mut cycles = Vec::new();
    let mut modules_seen = 0;
    for (dir, prefix) in groups {
        let graph = module_graph(&crates.join(dir), prefix);
        modules_seen += graph.len();
        for (a, uses) in &graph {
            for b in uses {
                if a < b && graph.get(b).is_some_and(|back| back.contains(a)) {
                    cycles.push(format!("{dir}: {a} <-> {b}"));
                }
            }
        }
    }
    assert!(
        modules_seen > 40,
        "the sources were read: {modules_seen} modules"
    );
    assert!(
        cycles.is_empty(),
        "modules that use each other: {cycles:#?}"
    );
}
