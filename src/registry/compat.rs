//! Schema compatibility: Avro schema resolution (reader vs writer) and the registry's
//! compatibility levels.
//!
//! [`check`] answers "can a reader using schema R decode data written with schema W?"
//! following the "Schema Resolution" section of the Avro specification, and lists
//! every rule that fails, each with a path into the *reader* schema (`/fields/2/type`,
//! `/symbols`, …; where the writer is a union, the writer's branch index is appended)
//! in the style of Avro's Java `SchemaCompatibility`, which Confluent's registry
//! reports:
//!
//! - primitives match themselves; the writer may be promoted int → long, float,
//!   double; long → float, double; float → double; string ↔ bytes. Logical types do
//!   not take part (resolution is on the underlying type);
//! - records, enums and fixed types match when the reader's full name equals the
//!   writer's, or one of the reader's aliases does. (The specification and Java
//!   compare unqualified names; full names are stricter, and are what Python's
//!   fastavro requires to decode, so a namespace change is reported as
//!   `NAME_MISMATCH` unless the reader lists the old name as an alias);
//! - records: each reader field is matched to the writer field of the same name (or
//!   of one of the reader field's aliases) and resolved recursively; a reader field
//!   absent from the writer needs a default; writer fields absent from the reader are
//!   skipped;
//! - enums: writer symbols absent from the reader need the reader's enum default;
//! - fixed: same size (and name);
//! - arrays and maps: items and values recursively;
//! - unions: every branch of a writer union must be readable by the reader; a
//!   non-union writer must be readable by some branch of a reader union.
//!
//! Recursive types are handled co-inductively: a pair of named types already under
//! examination is assumed compatible, so every pair is examined once.
//!
//! [`CompatibilityLevel`] and [`check_level`] turn that into the registry's policy:
//! BACKWARD (the new schema reads data written with the latest previous one),
//! FORWARD (the latest previous one reads data written with the new one), FULL
//! (both), their `_TRANSITIVE` forms (against every previous version rather than the
//! latest), and NONE.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::schema::{AvroSchema, NamedKind, PrimitiveType, Schema};

/// The rule an incompatibility breaks (names as in Avro's Java `SchemaCompatibility`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncompatibilityKind {
    /// Named types whose names (and reader aliases) do not match.
    NameMismatch,
    /// Fixed types of different sizes.
    FixedSizeMismatch,
    /// Writer enum symbols the reader lacks, and the reader enum has no default.
    MissingEnumSymbols,
    /// A reader field that the writer lacks has no default.
    ReaderFieldMissingDefaultValue,
    /// Types that cannot be resolved at all (e.g. reader `int`, writer `string`).
    TypeMismatch,
    /// A writer type that no branch of the reader union can read.
    MissingUnionBranch,
}

impl IncompatibilityKind {
    /// The rule's name, e.g. `READER_FIELD_MISSING_DEFAULT_VALUE`.
    pub fn as_str(self) -> &'static str {
        match self {
            IncompatibilityKind::NameMismatch => "NAME_MISMATCH",
            IncompatibilityKind::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
            IncompatibilityKind::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            IncompatibilityKind::ReaderFieldMissingDefaultValue => {
                "READER_FIELD_MISSING_DEFAULT_VALUE"
            }
            IncompatibilityKind::TypeMismatch => "TYPE_MISMATCH",
            IncompatibilityKind::MissingUnionBranch => "MISSING_UNION_BRANCH",
        }
    }
}

impl fmt::Display for IncompatibilityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed resolution rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// The rule.
    pub kind: IncompatibilityKind,
    /// Where, as a JSON-pointer-like path into the reader schema (`/` is the root).
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: {}", self.kind, self.path, self.message)
    }
}

/// Every reason why a reader with schema `reader` cannot decode data written with
/// `writer`; empty when it can.
pub fn check(reader: &AvroSchema, writer: &AvroSchema) -> Vec<Incompatibility> {
    let mut checker = Checker {
        reader,
        writer,
        visiting: BTreeSet::new(),
        out: Vec::new(),
    };
    checker.visit(reader.root(), writer.root(), "");
    checker.out
}

/// Whether `reader` can decode everything written with `writer`.
pub fn can_read(reader: &AvroSchema, writer: &AvroSchema) -> bool {
    check(reader, writer).is_empty()
}

struct Checker<'a> {
    reader: &'a AvroSchema,
    writer: &'a AvroSchema,
    /// Pairs of named types (reader, writer) already examined or under examination.
    visiting: BTreeSet<(String, String)>,
    out: Vec<Incompatibility>,
}

fn describe(schema: &AvroSchema, s: &Schema) -> String {
    match s {
        Schema::Primitive { kind, .. } => kind.name().to_owned(),
        Schema::Array { .. } => "array".to_owned(),
        Schema::Map { .. } => "map".to_owned(),
        Schema::Union(_) => "union".to_owned(),
        Schema::Named(n) => match schema.named(n) {
            Some(def) => format!("{} '{n}'", def.kind.type_name()),
            None => format!("'{n}'"),
        },
    }
}

fn promotable(reader: PrimitiveType, writer: PrimitiveType) -> bool {
    use PrimitiveType as P;
    reader == writer
        || matches!(
            (writer, reader),
            (P::Int, P::Long | P::Float | P::Double)
                | (P::Long, P::Float | P::Double)
                | (P::Float, P::Double)
                | (P::String, P::Bytes)
                | (P::Bytes, P::String)
        )
}

fn show_path(path: &str) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    }
}

impl Checker<'_> {
    fn report(&mut self, kind: IncompatibilityKind, path: &str, message: String) {
        self.out.push(Incompatibility {
            kind,
            path: show_path(path),
            message,
        });
    }

    /// Incompatibilities of one sub-problem, without recording them.
    fn trial(&mut self, r: &Schema, w: &Schema, path: &str) -> Vec<Incompatibility> {
        let saved_out = std::mem::take(&mut self.out);
        let saved_visiting = self.visiting.clone();
        self.visit(r, w, path);
        // A failed trial must not leave pairs marked as examined.
        let found = std::mem::replace(&mut self.out, saved_out);
        if !found.is_empty() {
            self.visiting = saved_visiting;
        }
        found
    }

    /// Whether a reader type shallowly matches a writer type (same kind and name, or
    /// a promotion), the spec's "match" used to pick a reader union branch.
    fn shallow_match(&self, r: &Schema, w: &Schema) -> bool {
        match (r, w) {
            (Schema::Primitive { kind: rk, .. }, Schema::Primitive { kind: wk, .. }) => {
                promotable(*rk, *wk)
            }
            (Schema::Array { .. }, Schema::Array { .. }) => true,
            (Schema::Map { .. }, Schema::Map { .. }) => true,
            (Schema::Named(rn), Schema::Named(wn)) => {
                match (self.reader.named(rn), self.writer.named(wn)) {
                    (Some(rd), Some(wd)) => {
                        std::mem::discriminant(&rd.kind) == std::mem::discriminant(&wd.kind)
                            && (rd.fullname == wd.fullname || rd.aliases.contains(&wd.fullname))
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    fn visit(&mut self, r: &Schema, w: &Schema, path: &str) {
        match (r, w) {
            (_, Schema::Union(wbranches)) => {
                for (i, wb) in wbranches.iter().enumerate() {
                    let bpath = format!("{path}/{i}");
                    if let Schema::Union(_) = r {
                        self.visit(r, wb, &bpath);
                    } else {
                        // The reader must read this writer branch directly.
                        let found = self.trial(r, wb, &bpath);
                        if !found.is_empty() {
                            if self.shallow_match(r, wb) {
                                self.out.extend(found);
                            } else {
                                let (rd, wd) =
                                    (describe(self.reader, r), describe(self.writer, wb));
                                self.report(
                                    IncompatibilityKind::TypeMismatch,
                                    &bpath,
                                    format!(
                                        "reader type {rd} cannot read branch {i} ({wd}) of the writer's union"
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            (Schema::Union(rbranches), _) => {
                let mut first_shallow: Option<(usize, Vec<Incompatibility>)> = None;
                for (j, rb) in rbranches.iter().enumerate() {
                    let bpath = format!("{path}/{j}");
                    let found = self.trial(rb, w, &bpath);
                    if found.is_empty() {
                        return;
                    }
                    if first_shallow.is_none() && self.shallow_match(rb, w) {
                        first_shallow = Some((j, found));
                    }
                }
                match first_shallow {
                    Some((_, found)) => self.out.extend(found),
                    None => {
                        let wd = describe(self.writer, w);
                        self.report(
                            IncompatibilityKind::MissingUnionBranch,
                            path,
                            format!("the reader's union has no branch for the writer's type {wd}"),
                        );
                    }
                }
            }
            (Schema::Primitive { kind: rk, .. }, Schema::Primitive { kind: wk, .. }) => {
                if !promotable(*rk, *wk) {
                    self.report(
                        IncompatibilityKind::TypeMismatch,
                        path,
                        format!(
                            "reader type {} is not compatible with writer type {}",
                            rk.name(),
                            wk.name()
                        ),
                    );
                }
            }
            (Schema::Array { items: ri, .. }, Schema::Array { items: wi, .. }) => {
                self.visit(ri, wi, &format!("{path}/items"));
            }
            (Schema::Map { values: rv, .. }, Schema::Map { values: wv, .. }) => {
                self.visit(rv, wv, &format!("{path}/values"));
            }
            (Schema::Named(rn), Schema::Named(wn)) => self.visit_named(rn, wn, path),
            _ => {
                let (rd, wd) = (describe(self.reader, r), describe(self.writer, w));
                self.report(
                    IncompatibilityKind::TypeMismatch,
                    path,
                    format!("reader type {rd} is not compatible with writer type {wd}"),
                );
            }
        }
    }

    fn visit_named(&mut self, rn: &str, wn: &str, path: &str) {
        let (Some(rd), Some(wd)) = (self.reader.named(rn), self.writer.named(wn)) else {
            return; // unreachable for parsed schemas
        };
        if std::mem::discriminant(&rd.kind) != std::mem::discriminant(&wd.kind) {
            self.report(
                IncompatibilityKind::TypeMismatch,
                path,
                format!(
                    "reader type {} '{rn}' is not compatible with writer type {} '{wn}'",
                    rd.kind.type_name(),
                    wd.kind.type_name()
                ),
            );
            return;
        }
        if rd.fullname != wd.fullname && !rd.aliases.contains(&wd.fullname) {
            let aliases = if rd.aliases.is_empty() {
                String::new()
            } else {
                format!(" (aliases: {})", rd.aliases.join(", "))
            };
            self.report(
                IncompatibilityKind::NameMismatch,
                &format!("{path}/name"),
                format!(
                    "reader name '{rn}'{aliases} does not match writer name '{wn}'; add '{wn}' to the reader's aliases to rename"
                ),
            );
            return;
        }
        if !self.visiting.insert((rn.to_owned(), wn.to_owned())) {
            return;
        }
        match (&rd.kind, &wd.kind) {
            (
                NamedKind::Record {
                    fields: rfields, ..
                },
                NamedKind::Record {
                    fields: wfields, ..
                },
            ) => {
                for (i, rf) in rfields.iter().enumerate() {
                    let wf = wfields
                        .iter()
                        .find(|wf| wf.name == rf.name)
                        .or_else(|| wfields.iter().find(|wf| rf.aliases.contains(&wf.name)));
                    match wf {
                        Some(wf) => {
                            self.visit(&rf.schema, &wf.schema, &format!("{path}/fields/{i}/type"))
                        }
                        None if rf.default.is_some() => {}
                        None => self.report(
                            IncompatibilityKind::ReaderFieldMissingDefaultValue,
                            &format!("{path}/fields/{i}"),
                            format!(
                                "reader field '{}' has no default and is missing in the writer",
                                rf.name
                            ),
                        ),
                    }
                }
            }
            (
                NamedKind::Enum {
                    symbols: rsyms,
                    default,
                },
                NamedKind::Enum { symbols: wsyms, .. },
            ) => {
                let missing: Vec<&str> = wsyms
                    .iter()
                    .filter(|s| !rsyms.contains(s))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() && default.is_none() {
                    self.report(
                        IncompatibilityKind::MissingEnumSymbols,
                        &format!("{path}/symbols"),
                        format!(
                            "the reader's enum '{rn}' lacks the writer's symbols [{}] and has no default",
                            missing.join(", ")
                        ),
                    );
                }
            }
            (NamedKind::Fixed { size: rs, .. }, NamedKind::Fixed { size: ws, .. }) if rs != ws => {
                self.report(
                    IncompatibilityKind::FixedSizeMismatch,
                    &format!("{path}/size"),
                    format!("reader fixed '{rn}' has size {rs}, writer fixed '{wn}' has size {ws}"),
                );
            }
            _ => {}
        }
    }
}

/// How new schemas must relate to a subject's previous versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// No check.
    None,
    /// The new schema reads data written with the latest previous version.
    #[default]
    Backward,
    /// The new schema reads data written with every previous version.
    BackwardTransitive,
    /// The latest previous version reads data written with the new schema.
    Forward,
    /// Every previous version reads data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest previous version.
    Full,
    /// Backward and forward against every previous version.
    FullTransitive,
}

impl CompatibilityLevel {
    /// Every level, in Confluent's documentation order.
    pub const ALL: [CompatibilityLevel; 7] = [
        CompatibilityLevel::None,
        CompatibilityLevel::Backward,
        CompatibilityLevel::BackwardTransitive,
        CompatibilityLevel::Forward,
        CompatibilityLevel::ForwardTransitive,
        CompatibilityLevel::Full,
        CompatibilityLevel::FullTransitive,
    ];

    /// The level's name, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityLevel::None => "NONE",
            CompatibilityLevel::Backward => "BACKWARD",
            CompatibilityLevel::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityLevel::Forward => "FORWARD",
            CompatibilityLevel::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityLevel::Full => "FULL",
            CompatibilityLevel::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the new schema must read data of previous versions.
    pub fn backward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Backward
                | CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }

    /// Whether previous versions must read data of the new schema.
    pub fn forward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Forward
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }

    /// Whether every previous version counts, not just the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = RegistryError;

    /// Case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompatibilityLevel::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| RegistryError::InvalidCompatibilityLevel(s.to_owned()))
    }
}

/// Which schema was the reader when an incompatibility was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The new schema reading data of a previous version (BACKWARD).
    NewReadsOld,
    /// A previous version reading data of the new schema (FORWARD).
    OldReadsNew,
}

/// An incompatibility between the new schema and one previous version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The previous version's number.
    pub version: u32,
    /// Which side was the reader.
    pub direction: Direction,
    /// The failed rule.
    pub incompatibility: Incompatibility,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (reader, writer) = match self.direction {
            Direction::NewReadsOld => {
                ("new schema".to_owned(), format!("version {}", self.version))
            }
            Direction::OldReadsNew => {
                (format!("version {}", self.version), "new schema".to_owned())
            }
        };
        write!(
            f,
            "{} [reader: {reader}, writer: {writer}]",
            self.incompatibility
        )
    }
}

/// Checks `new` against `previous` (oldest first: `(version, schema)`) as `level`
/// requires: the latest only, or all of them when transitive. Empty when compatible.
pub fn check_level(
    level: CompatibilityLevel,
    new: &AvroSchema,
    previous: &[(u32, &AvroSchema)],
) -> Vec<Violation> {
    let against: &[(u32, &AvroSchema)] = if level.transitive() {
        previous
    } else {
        match previous.split_last() {
            Some((last, _)) => std::slice::from_ref(last),
            None => &[],
        }
    };
    let mut out = Vec::new();
    // Newest first: the most relevant failures come first.
    for (version, old) in against.iter().rev() {
        if level.backward() {
            out.extend(check(new, old).into_iter().map(|i| Violation {
                version: *version,
                direction: Direction::NewReadsOld,
                incompatibility: i,
            }));
        }
        if level.forward() {
            out.extend(check(old, new).into_iter().map(|i| Violation {
                version: *version,
                direction: Direction::OldReadsNew,
                incompatibility: i,
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use IncompatibilityKind as K;

    fn s(text: &str) -> AvroSchema {
        AvroSchema::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// The (rule, path) pairs of `check(reader, writer)`.
    fn rules(reader: &str, writer: &str) -> Vec<(K, String)> {
        check(&s(reader), &s(writer))
            .into_iter()
            .map(|i| (i.kind, i.path))
            .collect()
    }

    fn ok(reader: &str, writer: &str) {
        let found = check(&s(reader), &s(writer));
        assert!(
            found.is_empty(),
            "reader {reader} / writer {writer}: {found:?}"
        );
    }

    fn record(name: &str, fields: &str) -> String {
        format!(r#"{{"type":"record","name":"{name}","namespace":"ns","fields":[{fields}]}}"#)
    }

    #[test]
    fn primitives_and_promotions() {
        let all = [
            "null", "boolean", "int", "long", "float", "double", "bytes", "string",
        ];
        let allowed = [
            ("int", "long"),
            ("int", "float"),
            ("int", "double"),
            ("long", "float"),
            ("long", "double"),
            ("float", "double"),
            ("string", "bytes"),
            ("bytes", "string"),
        ];
        for w in all {
            for r in all {
                let found = rules(&format!("\"{r}\""), &format!("\"{w}\""));
                if r == w || allowed.contains(&(w, r)) {
                    assert!(found.is_empty(), "writer {w} reader {r}: {found:?}");
                } else {
                    assert_eq!(
                        found,
                        [(K::TypeMismatch, "/".to_owned())],
                        "writer {w} reader {r}"
                    );
                }
            }
        }
        // Logical types do not take part.
        ok(
            r#"{"type":"long","logicalType":"timestamp-millis"}"#,
            r#""long""#,
        );
        ok(r#""int""#, r#"{"type":"int","logicalType":"date"}"#);
    }

    #[test]
    fn promotion_inside_a_record_field() {
        let w = record("R", r#"{"name":"n","type":"int"}"#);
        let r = record("R", r#"{"name":"n","type":"long"}"#);
        ok(&r, &w);
        let found = check(&s(&w), &s(&r));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, K::TypeMismatch);
        assert_eq!(found[0].path, "/fields/0/type");
        assert_eq!(
            found[0].to_string(),
            "TYPE_MISMATCH at /fields/0/type: reader type int is not compatible with writer type long"
        );
    }

    #[test]
    fn reader_field_missing_default_both_ways() {
        let v1 = record("R", r#"{"name":"id","type":"long"}"#);
        let with_default = record(
            "R",
            r#"{"name":"id","type":"long"},{"name":"total","type":"double","default":0}"#,
        );
        let without_default = record(
            "R",
            r#"{"name":"id","type":"long"},{"name":"x","type":"int"},{"name":"total","type":"double"}"#,
        );
        // Added field with a default: the new reader fills it; the old reader skips it.
        ok(&with_default, &v1);
        ok(&v1, &with_default);
        // Without a default, the new reader cannot read old data...
        let found = check(&s(&without_default), &s(&v1));
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[1].to_string(),
            "READER_FIELD_MISSING_DEFAULT_VALUE at /fields/2: reader field 'total' has no default and is missing in the writer"
        );
        // ...but the old reader can read new data (extra writer fields are skipped).
        ok(&v1, &without_default);
    }

    #[test]
    fn field_aliases_match_writer_fields() {
        let w = record("R", r#"{"name":"old_name","type":"string"}"#);
        let r = record(
            "R",
            r#"{"name":"new_name","type":"string","aliases":["old_name"]}"#,
        );
        ok(&r, &w);
        assert_eq!(
            rules(&record("R", r#"{"name":"new_name","type":"string"}"#), &w),
            [(K::ReaderFieldMissingDefaultValue, "/fields/0".to_owned())]
        );
        // The alias is the reader's: the other way round it is not used.
        assert_eq!(
            rules(&w, &r),
            [(K::ReaderFieldMissingDefaultValue, "/fields/0".to_owned())]
        );
    }

    #[test]
    fn record_names_and_aliases() {
        let a = record("A", "");
        let b = record("B", "");
        assert_eq!(rules(&a, &b), [(K::NameMismatch, "/name".to_owned())]);
        assert_eq!(rules(&b, &a), [(K::NameMismatch, "/name".to_owned())]);
        let b_alias =
            r#"{"type":"record","name":"B","namespace":"ns","aliases":["A"],"fields":[]}"#;
        ok(b_alias, &a);
        assert_eq!(rules(&a, b_alias), [(K::NameMismatch, "/name".to_owned())]);
        // A namespace change is a different full name.
        let other_ns = r#"{"type":"record","name":"A","namespace":"other","fields":[]}"#;
        assert_eq!(rules(other_ns, &a), [(K::NameMismatch, "/name".to_owned())]);
        ok(
            r#"{"type":"record","name":"A","namespace":"other","aliases":["ns.A"],"fields":[]}"#,
            &a,
        );
    }

    #[test]
    fn enums_missing_symbols_both_ways() {
        let small = r#"{"type":"enum","name":"E","symbols":["A","B"]}"#;
        let big = r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#;
        let big_default = r#"{"type":"enum","name":"E","symbols":["A","B","C"],"default":"A"}"#;
        let small_default = r#"{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}"#;
        ok(big, small);
        let found = check(&s(small), &s(big));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, K::MissingEnumSymbols);
        assert_eq!(found[0].path, "/symbols");
        assert!(found[0].message.contains("[C]"), "{}", found[0].message);
        ok(small_default, big_default);
        ok(small_default, big);
        ok(big_default, small);
        assert_eq!(
            rules(r#"{"type":"enum","name":"F","symbols":["A"]}"#, small),
            [(K::NameMismatch, "/name".to_owned())]
        );
    }

    #[test]
    fn fixed_size_and_name() {
        let f4 = r#"{"type":"fixed","name":"F","size":4}"#;
        let f8 = r#"{"type":"fixed","name":"F","size":8}"#;
        let g4 = r#"{"type":"fixed","name":"G","size":4}"#;
        ok(f4, f4);
        assert_eq!(rules(f4, f8), [(K::FixedSizeMismatch, "/size".to_owned())]);
        assert_eq!(rules(f8, f4), [(K::FixedSizeMismatch, "/size".to_owned())]);
        assert_eq!(rules(g4, f4), [(K::NameMismatch, "/name".to_owned())]);
        // Named types of different kinds never match.
        assert_eq!(
            rules(r#"{"type":"enum","name":"F","symbols":["A"]}"#, f4),
            [(K::TypeMismatch, "/".to_owned())]
        );
        assert_eq!(rules(f4, r#""bytes""#), [(K::TypeMismatch, "/".to_owned())]);
    }

    #[test]
    fn arrays_and_maps_recursively() {
        let ai = r#"{"type":"array","items":"int"}"#;
        let al = r#"{"type":"array","items":"long"}"#;
        let mi = r#"{"type":"map","values":"int"}"#;
        let ml = r#"{"type":"map","values":"long"}"#;
        ok(al, ai);
        assert_eq!(rules(ai, al), [(K::TypeMismatch, "/items".to_owned())]);
        ok(ml, mi);
        assert_eq!(rules(mi, ml), [(K::TypeMismatch, "/values".to_owned())]);
        assert_eq!(rules(ai, mi), [(K::TypeMismatch, "/".to_owned())]);
        assert_eq!(rules(mi, ai), [(K::TypeMismatch, "/".to_owned())]);
        // Nested: an array of records whose field lost its default.
        let w = format!(r#"{{"type":"array","items":{}}}"#, record("I", ""));
        let r = format!(
            r#"{{"type":"array","items":{}}}"#,
            record("I", r#"{"name":"q","type":"int"}"#)
        );
        assert_eq!(
            rules(&r, &w),
            [(
                K::ReaderFieldMissingDefaultValue,
                "/items/fields/0".to_owned()
            )]
        );
    }

    #[test]
    fn unions_both_sides() {
        let ns = r#"["null","string"]"#;
        let nsi = r#"["null","string","int"]"#;
        // Writer union: every branch must be readable.
        ok(nsi, ns);
        assert_eq!(rules(ns, nsi), [(K::MissingUnionBranch, "/2".to_owned())]);
        // Reader union, writer plain type: some branch must read it.
        ok(ns, r#""string""#);
        ok(r#"["null","long"]"#, r#""int""#);
        assert_eq!(
            rules(ns, r#""int""#),
            [(K::MissingUnionBranch, "/".to_owned())]
        );
        // Writer union, reader plain type: every writer branch must be readable.
        ok(r#""long""#, r#"["int","long"]"#);
        let found = check(&s(r#""string""#), &s(ns));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, K::TypeMismatch);
        assert!(
            found[0].message.contains("branch 0 (null)"),
            "{}",
            found[0].message
        );
        // Optional field made required and back.
        let opt = record("R", r#"{"name":"c","type":["null","long"],"default":null}"#);
        let req = record("R", r#"{"name":"c","type":"long"}"#);
        ok(&opt, &req);
        let found = check(&s(&req), &s(&opt));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "/fields/0/type/0", "writer branch 0 (null)");
    }

    #[test]
    fn union_branch_with_a_deep_problem_is_reported_in_depth() {
        let w = record("R", r#"{"name":"a","type":"int"}"#);
        let r = format!(
            r#"["null",{}]"#,
            record(
                "R",
                r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#
            )
        );
        assert_eq!(
            rules(&r, &w),
            [(K::ReaderFieldMissingDefaultValue, "/1/fields/1".to_owned())]
        );
    }

    #[test]
    fn recursive_types_terminate() {
        let list = |extra: &str| {
            format!(
                r#"{{"type":"record","name":"Node","fields":[{{"name":"v","type":"int"}},{{"name":"next","type":["null","Node"]}}{extra}]}}"#
            )
        };
        ok(&list(""), &list(""));
        ok(
            &list(r#",{"name":"w","type":"int","default":1}"#),
            &list(""),
        );
        assert_eq!(
            rules(&list(r#",{"name":"w","type":"int"}"#), &list("")),
            [(K::ReaderFieldMissingDefaultValue, "/fields/2".to_owned())]
        );
    }

    #[test]
    fn repository_schema_evolutions() {
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"));
        let dir = if dir.is_dir() {
            dir
        } else {
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../main/schemas"))
        };
        let text = std::fs::read_to_string(dir.join("orders.order_placed.avsc")).unwrap();
        let v1 = s(&text);
        ok(&text, &text);
        // Adding an optional field is FULL compatible.
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        value["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                {"name": "coupon", "type": ["null", "string"], "default": null}
            ));
        let v2 = AvroSchema::from_json(&value).unwrap();
        assert!(check_level(CompatibilityLevel::FullTransitive, &v2, &[(1, &v1)]).is_empty());
        // Removing `total` (no default) breaks FORWARD only.
        let fields = value["fields"].as_array_mut().unwrap();
        fields.retain(|f| f["name"] != "total");
        let v3 = AvroSchema::from_json(&value).unwrap();
        assert!(check_level(CompatibilityLevel::Backward, &v3, &[(1, &v1), (2, &v2)]).is_empty());
        let found = check_level(CompatibilityLevel::Forward, &v3, &[(1, &v1), (2, &v2)]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].version, 2);
        assert_eq!(
            found[0].to_string(),
            "READER_FIELD_MISSING_DEFAULT_VALUE at /fields/8: reader field 'total' has no default and is missing in the writer [reader: version 2, writer: new schema]"
        );
    }

    #[test]
    fn levels_pick_versions_and_directions() {
        let v1 = s(&record("R", r#"{"name":"a","type":"int"}"#));
        // v2 drops `a`, adds `b` with a default.
        let v2 = s(&record("R", r#"{"name":"b","type":"int","default":0}"#));
        // v3 adds `a` back, without a default.
        let v3 = s(&record(
            "R",
            r#"{"name":"b","type":"int","default":0},{"name":"a","type":"int"}"#,
        ));
        let prev = [(1, &v1), (2, &v2)];
        let versions = |level| -> Vec<(u32, Direction)> {
            check_level(level, &v3, &prev)
                .into_iter()
                .map(|v| (v.version, v.direction))
                .collect()
        };
        use CompatibilityLevel as L;
        assert_eq!(versions(L::None), []);
        // Against v2 only: v3 cannot read v2 data (no `a`); v2 reads v3 data fine.
        assert_eq!(versions(L::Backward), [(2, Direction::NewReadsOld)]);
        assert_eq!(versions(L::Forward), []);
        assert_eq!(versions(L::Full), [(2, Direction::NewReadsOld)]);
        // Against v1 as well: v3 reads v1 data (has `a`, `b` defaults); v1 reads v3 data.
        assert_eq!(
            versions(L::BackwardTransitive),
            [(2, Direction::NewReadsOld)]
        );
        assert_eq!(versions(L::ForwardTransitive), []);
        // v2 against v1: transitive or not, only one previous version.
        assert_eq!(
            check_level(L::Forward, &v2, &[(1, &v1)])
                .into_iter()
                .map(|v| (v.version, v.direction))
                .collect::<Vec<_>>(),
            [(1, Direction::OldReadsNew)]
        );
        assert!(check_level(L::Backward, &v2, &[(1, &v1)]).is_empty());
        assert!(check_level(L::FullTransitive, &v1, &[]).is_empty());
        // Transitive catches what non-transitive misses: v1 -> v2 (int -> long) -> v3 (int).
        let w1 = s(&record("R", r#"{"name":"a","type":"long"}"#));
        let w2 = s(&record("R", r#"{"name":"a","type":"int"}"#));
        let w3 = s(&record("R", r#"{"name":"a","type":"double"}"#));
        assert!(check_level(L::Forward, &w3, &[(1, &w1), (2, &w2)]).len() == 1);
        let found = check_level(L::BackwardTransitive, &w2, &[(1, &w1)]);
        assert_eq!(found.len(), 1);
        assert!(check_level(L::Backward, &w3, &[(1, &w2), (2, &w1)]).is_empty());
        assert!(check_level(L::BackwardTransitive, &w2, &[(1, &w1), (2, &w3)]).len() == 2);
    }

    #[test]
    fn level_names() {
        for level in CompatibilityLevel::ALL {
            assert_eq!(level.as_str().parse::<CompatibilityLevel>().unwrap(), level);
            assert_eq!(
                serde_json::to_string(&level).unwrap(),
                format!("\"{}\"", level.as_str())
            );
        }
        assert_eq!(
            "full_transitive".parse::<CompatibilityLevel>().unwrap(),
            CompatibilityLevel::FullTransitive
        );
        assert!("SIDEWAYS".parse::<CompatibilityLevel>().is_err());
        assert_eq!(CompatibilityLevel::default(), CompatibilityLevel::Backward);
    }
}
