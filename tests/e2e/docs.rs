//! The documentation names what exists: every source path `docs/architecture.md`
//! points a reader to (`src/…`, `docs/…`, `tests/…`, `scripts/…`, `schemas/…`, with
//! `{a,b}` alternatives expanded, and module paths relative to `src/`) is a file or directory of the repository, so the
//! map cannot drift from the code unnoticed.

use std::path::Path;

/// `src/connectors/{json_lines,parquet_sink}.rs` → both paths.
fn expand(path: &str) -> Vec<String> {
    match (path.find('{'), path.find('}')) {
        (Some(open), Some(close)) if open < close => path[open + 1..close]
            .split(',')
            .flat_map(|alt| expand(&format!("{}{}{}", &path[..open], alt, &path[close + 1..])))
            .collect(),
        _ => vec![path.to_string()],
    }
}

#[test]
fn every_path_the_architecture_map_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let mut checked = 0;
    let mut missing = Vec::new();
    for span in text.split('`').skip(1).step_by(2) {
        let path = span.split_whitespace().next().unwrap_or_default();
        if path.contains(['*', '…', '[']) {
            continue;
        }
        let path = if [
            "src/", "docs/", "tests/", "scripts/", "schemas/", "benches/", "docker/",
        ]
        .iter()
        .any(|p| path.starts_with(p))
        {
            path.to_string()
        } else if path.ends_with(".rs") {
            // Module paths the map gives relative to `src/` (`engine/runtime.rs`).
            format!("src/{path}")
        } else {
            continue;
        };
        for p in expand(&path) {
            checked += 1;
            if !root.join(&p).exists() {
                missing.push(p);
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the map still there?"
    );
    assert!(
        missing.is_empty(),
        "docs/architecture.md names paths that do not exist: {missing:?}"
    );
}
