//! The code's layout holds: the graph of the crate's top-level modules (`src/*`), as
//! their non-test code names each other (`crate::module`, `crate::{a, b}`), has no
//! cycle, so each layer reads without the ones above it (docs/architecture.md,
//! "Layers").
//!
//! Two modules are left out by design: `error`, the crate-level error that gathers
//! every module's error enum (the root, like `lib.rs`), and `testing`, the unit tests'
//! helpers (compiled only for tests).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const OUTSIDE_THE_GRAPH: [&str; 2] = ["error", "testing"];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The code of a file without its comments and its `#[cfg(test)] mod tests` (inline or
/// in a `tests.rs`).
fn code(file: &Path) -> String {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("\n#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `code` names: `crate::name` and every name in `crate::{…}` groups.
fn named(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for part in code.split("crate::").skip(1) {
        let group = if let Some(rest) = part.strip_prefix('{') {
            &rest[..rest.find('}').unwrap_or(rest.len())]
        } else {
            part
        };
        let mut take = |word: &str| {
            if modules.contains(word) {
                found.insert(word.to_string());
            }
        };
        if part.starts_with('{') {
            // `crate::{engine::X, state}`: the first segment of each item.
            for item in group.split(',') {
                take(item.trim().split("::").next().unwrap_or_default());
            }
        } else {
            let word: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            take(&word);
        }
    }
    found
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if !["lib", "main"].contains(&name.as_str()) && !OUTSIDE_THE_GRAPH.contains(&name.as_str())
        {
            modules.insert(name);
        }
    }
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut files = Vec::new();
        rust_files(&src.join(module), &mut files);
        rust_files(&src.join(format!("{module}.rs")), &mut files);
        let mut uses = BTreeSet::new();
        for file in files {
            uses.extend(named(&code(&file), &modules));
        }
        uses.remove(module);
        graph.insert(module.clone(), uses);
    }
    graph
}

/// A cycle through `node`, if its depth-first walk finds one.
fn cycle_from(
    node: &str,
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|p| p == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in &graph[node] {
        if let Some(cycle) = cycle_from(next, graph, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn the_module_graph_has_no_cycles() {
    let graph = module_graph();
    assert!(graph.len() > 10, "found the crate's modules: {graph:?}");
    // The walk sees edges: the engine is built on the shared vocabulary.
    assert!(graph["engine"].contains("types"), "{graph:?}");
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = cycle_from(node, &graph, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_shared_vocabulary_imports_no_module_of_the_crate_but_metrics() {
    let graph = module_graph();
    let extra: Vec<_> = graph["types"].iter().filter(|m| *m != "metrics").collect();
    assert!(extra.is_empty(), "src/types.rs names {extra:?}");
}
