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

/// The text of every `.rs` file under `src/`.
fn rust_sources() -> Vec<String> {
    let mut texts = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                texts.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    texts
}

/// Every error code `src/` can print (a code as a string literal, `"SQL003"`, or
/// printed as is, `error[PIP005]`) has a row `| CODE | meaning |` in `docs/errors.md`.
#[test]
fn every_error_code_in_the_source_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut codes = std::collections::BTreeSet::new();
    for text in rust_sources() {
        codes.extend(error_codes(&text));
    }
    assert!(
        codes.len() > 50 && codes.contains("IO001") && codes.contains("PIP005"),
        "only {} codes found: {codes:?}",
        codes.len()
    );
    let text = std::fs::read_to_string(root.join("docs/errors.md")).unwrap();
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !text.contains(&format!("\n| {c} |")))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes defined in src/ without a row in docs/errors.md: {missing:?}"
    );
}

/// The codes in `text`: two to four capital letters and three digits, quoted
/// (`"REG024"`) or bracketed (`error[ADM001]`).
fn error_codes(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    for (i, &open) in b.iter().enumerate() {
        if open != b'"' && open != b'[' {
            continue;
        }
        let letters = b[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_uppercase())
            .count();
        let start = i + 1 + letters;
        let digits = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        let close = if open == b'"' { b'"' } else { b']' };
        if (2..=4).contains(&letters) && digits == 3 && b.get(start + 3) == Some(&close) {
            found.push(text[i + 1..start + 3].to_string());
        }
    }
    found
}

#[test]
fn error_codes_are_found_quoted_or_bracketed() {
    let found = error_codes(
        r#"Error::Io { .. } => "IO001", eprintln!("error[PIP005]: …"); "SQL0031" [AB12] "x""#,
    );
    assert_eq!(found, ["IO001", "PIP005"]);
}

/// Names `tributary_…` in `src/` that are not metrics: DynamoDB tables (after a prefix).
const NOT_METRICS: [&str; 2] = ["tributary_checkpoints", "tributary_fallback"];

/// Every metric name in `src/` (a `tributary_…` word, histogram sample suffixes
/// aside) is described for `/metrics` (`tributary::metrics::SERIES`, whose `# HELP`
/// lines `describe` installs) and named in `docs/operations.md`; and every described
/// series is documented there with its type.
#[test]
fn every_metric_in_the_source_is_described_and_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = std::collections::BTreeSet::new();
    for text in rust_sources() {
        names.extend(metric_names(&text));
    }
    for n in NOT_METRICS {
        assert!(
            names.remove(n),
            "{n} is no longer in src/: drop it from NOT_METRICS"
        );
    }
    let described: std::collections::BTreeSet<String> = tributary::metrics::SERIES
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert!(
        names.len() >= 30
            && names.contains("tributary_rows_in_total")
            && names.contains("tributary_component_up")
            && names.contains("tributary_kafka_breaker_state")
            && names.contains("tributary_fallback_records_total"),
        "only {} metric names found: {names:?}",
        names.len()
    );
    let undescribed: Vec<&String> = names.difference(&described).collect();
    assert!(
        undescribed.is_empty(),
        "metric names in src/ missing from tributary::metrics::SERIES (no # HELP): {undescribed:?}"
    );
    let docs = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let documented = metric_names(&docs);
    let undocumented: Vec<&String> = names
        .union(&described)
        .filter(|n| !documented.contains(*n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "metric names not in docs/operations.md: {undocumented:?}"
    );
    for s in tributary::metrics::SERIES {
        let kind = format!("{:?}", s.kind).to_lowercase();
        let row = format!("\n| `{}` | {kind} |", s.name);
        assert!(
            docs.contains(&row),
            "docs/operations.md has no row `| `{}` | {kind} |`",
            s.name
        );
    }
}

/// The words `tributary_[a-z_]+` of `text` (not inside a longer word such as
/// `_tributary_commits`), without the `_bucket`, `_sum` and `_count` of histogram samples.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = text.as_bytes();
    let mut found = std::collections::BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("tributary_").map(|i| i + from) {
        let end = at
            + b[at..]
                .iter()
                .take_while(|&&c| c.is_ascii_lowercase() || c == b'_')
                .count();
        from = end.max(at + 1);
        if at > 0 && is_word(b[at - 1]) || b.get(end).is_some_and(|&c| is_word(c)) {
            continue;
        }
        let name = text[at..end].trim_end_matches('_');
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if name.len() > "tributary_".len() {
            found.insert(name.to_string());
        }
    }
    found
}

#[test]
fn metric_names_are_whole_words_without_sample_suffixes() {
    let found = metric_names(
        "counter!(\"tributary_rows_in_total\"); _tributary_commits tributary_x1 \
         {prefix}tributary_fallback tributary_lookup_seconds_bucket{le=\"1\"} tributary_",
    );
    let found: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(
        found,
        [
            "tributary_fallback",
            "tributary_lookup_seconds",
            "tributary_rows_in_total"
        ]
    );
}
