//! Avro schema model, parser and canonical forms (Avro specification 1.11).
//!
//! Owns the translation of schema JSON into an [`AvroSchema`]: primitive, record
//! (and `error`), enum, array, map, union and fixed types, named references,
//! namespaces and full names, aliases, field defaults and logical types.
//!
//! Invariants of a parsed [`AvroSchema`]:
//! - every named type (record, enum, fixed) is stored once, under its full name, in
//!   [`AvroSchema::named`]; the tree of [`Schema`] nodes refers to it by full name
//!   ([`Schema::Named`]), so recursive types are finite. The first occurrence of a
//!   name in a depth-first walk of the tree is its definition site;
//! - every name was defined before it was referenced (or is an enclosing record);
//! - unions contain no union and no two branches of the same type (named types:
//!   of the same full name);
//! - field names are unique within a record, enum symbols unique within an enum;
//! - every field default is valid for the field's type (for a union, its first
//!   branch, as the specification says);
//! - logical types that are unknown or invalid (e.g. a decimal whose scale exceeds its
//!   precision) are ignored, as the specification asks: the schema is its underlying
//!   type, and the annotation is kept among the node's properties.
//!
//! Two textual forms are produced:
//! - [`AvroSchema::canonical_form`]: the specification's *Parsing Canonical Form*
//!   (`[PRIMITIVES]`, `[FULLNAMES]`, `[STRIP]`, `[ORDER]`, `[STRINGS]`, `[INTEGERS]`,
//!   `[WHITESPACE]`). It decides whether two schemas read and write the same bytes.
//! - [`AvroSchema::normalized`]: the same normalisation (full names, fixed attribute
//!   order, no whitespace, primitives in simple form when they carry nothing else) but
//!   keeping every attribute that the canonical form strips (defaults, aliases,
//!   logical types, `doc`, `order`, custom properties). The registry de-duplicates
//!   schemas on this form: two texts that differ only in layout, attribute order or
//!   namespace spelling get one id, while a changed default or doc is a new schema
//!   (as in Confluent's registry), because the canonical form alone would silently
//!   drop such a change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::RegistryError;

/// Extra attributes of a schema node, kept verbatim (e.g. `logicalType`, `precision`,
/// `connect.name`, `order`). Sorted by key.
pub type Props = BTreeMap<String, Value>;

/// The eight primitive types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrimitiveType {
    /// `null`
    Null,
    /// `boolean`
    Boolean,
    /// `int` (32-bit signed)
    Int,
    /// `long` (64-bit signed)
    Long,
    /// `float` (32-bit IEEE 754)
    Float,
    /// `double` (64-bit IEEE 754)
    Double,
    /// `bytes`
    Bytes,
    /// `string` (UTF-8)
    String,
}

impl PrimitiveType {
    /// The type's name in schema JSON.
    pub fn name(self) -> &'static str {
        match self {
            PrimitiveType::Null => "null",
            PrimitiveType::Boolean => "boolean",
            PrimitiveType::Int => "int",
            PrimitiveType::Long => "long",
            PrimitiveType::Float => "float",
            PrimitiveType::Double => "double",
            PrimitiveType::Bytes => "bytes",
            PrimitiveType::String => "string",
        }
    }

    /// The primitive type named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "null" => PrimitiveType::Null,
            "boolean" => PrimitiveType::Boolean,
            "int" => PrimitiveType::Int,
            "long" => PrimitiveType::Long,
            "float" => PrimitiveType::Float,
            "double" => PrimitiveType::Double,
            "bytes" => PrimitiveType::Bytes,
            "string" => PrimitiveType::String,
            _ => return None,
        })
    }
}

/// A valid logical type annotation (invalid or unknown ones are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogicalType {
    /// `decimal` on `bytes` or `fixed`.
    Decimal {
        /// Maximum number of digits, at least 1.
        precision: u32,
        /// Digits after the point, at most `precision`.
        scale: u32,
    },
    /// `uuid` on `string`.
    Uuid,
    /// `date` on `int`.
    Date,
    /// `time-millis` on `int`.
    TimeMillis,
    /// `time-micros` on `long`.
    TimeMicros,
    /// `timestamp-millis` on `long`.
    TimestampMillis,
    /// `timestamp-micros` on `long`.
    TimestampMicros,
    /// `local-timestamp-millis` on `long`.
    LocalTimestampMillis,
    /// `local-timestamp-micros` on `long`.
    LocalTimestampMicros,
    /// `duration` on `fixed` of size 12.
    Duration,
}

/// A schema node. Named types appear as [`Schema::Named`]; their definitions live in
/// [`AvroSchema::named`].
#[derive(Debug, Clone, PartialEq)]
pub enum Schema {
    /// A primitive type, possibly annotated.
    Primitive {
        /// Which primitive.
        kind: PrimitiveType,
        /// The logical type, when valid for `kind`.
        logical: Option<LogicalType>,
        /// Every attribute but `type` (including `logicalType` and its parameters).
        props: Props,
    },
    /// `{"type": "array", "items": …}`
    Array {
        /// The item schema.
        items: Box<Schema>,
        /// Every attribute but `type` and `items`.
        props: Props,
    },
    /// `{"type": "map", "values": …}`
    Map {
        /// The value schema (keys are strings).
        values: Box<Schema>,
        /// Every attribute but `type` and `values`.
        props: Props,
    },
    /// A union of branches, in declaration order.
    Union(Vec<Schema>),
    /// A record, enum or fixed, by full name.
    Named(String),
}

impl Schema {
    fn primitive(kind: PrimitiveType) -> Self {
        Schema::Primitive {
            kind,
            logical: None,
            props: Props::new(),
        }
    }
}

/// A record field.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The field's name (a simple name).
    pub name: String,
    /// Alternative names, used by readers to match a writer's field.
    pub aliases: Vec<String>,
    /// Documentation.
    pub doc: Option<String>,
    /// The field's type.
    pub schema: Schema,
    /// The default value (JSON encoding of the spec), validated against the type.
    pub default: Option<Value>,
    /// Other attributes (`order`, custom properties).
    pub props: Props,
}

/// What kind of named type a [`NamedSchema`] is.
#[derive(Debug, Clone, PartialEq)]
pub enum NamedKind {
    /// A record (or a protocol `error`, which is a record).
    Record {
        /// Declared as `"type": "error"`.
        error: bool,
        /// The fields, in order.
        fields: Vec<Field>,
    },
    /// An enum.
    Enum {
        /// The symbols, in order.
        symbols: Vec<String>,
        /// The symbol a reader uses for a writer symbol it does not know.
        default: Option<String>,
    },
    /// A fixed-size byte string.
    Fixed {
        /// Size in bytes.
        size: u64,
        /// The logical type, when valid (`decimal`, `duration`).
        logical: Option<LogicalType>,
    },
}

impl NamedKind {
    /// `record`, `error`, `enum` or `fixed`.
    pub fn type_name(&self) -> &'static str {
        match self {
            NamedKind::Record { error: false, .. } => "record",
            NamedKind::Record { error: true, .. } => "error",
            NamedKind::Enum { .. } => "enum",
            NamedKind::Fixed { .. } => "fixed",
        }
    }
}

/// The definition of a named type.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedSchema {
    /// `namespace.name`, or just `name` in the null namespace.
    pub fullname: String,
    /// Aliases, as full names (resolved against the type's namespace).
    pub aliases: Vec<String>,
    /// Documentation.
    pub doc: Option<String>,
    /// Record, enum or fixed, with its contents.
    pub kind: NamedKind,
    /// Other attributes (logical type annotations, custom properties).
    pub props: Props,
}

impl NamedSchema {
    /// The name without its namespace.
    pub fn simple_name(&self) -> &str {
        self.fullname.rsplit('.').next().unwrap_or(&self.fullname)
    }

    /// The namespace, `None` for the null namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.fullname.rsplit_once('.').map(|(ns, _)| ns)
    }
}

/// A parsed, validated Avro schema.
#[derive(Debug, Clone, PartialEq)]
pub struct AvroSchema {
    root: Schema,
    named: BTreeMap<String, NamedSchema>,
}

impl AvroSchema {
    /// Parses schema JSON text. Errors are [`RegistryError::InvalidSchema`].
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| invalid("", format!("schema is not valid JSON: {e}")))?;
        Self::from_json(&value)
    }

    /// Parses a schema from its JSON value.
    pub fn from_json(value: &Value) -> Result<Self, RegistryError> {
        let mut parser = Parser::default();
        let root = parser.parse(value, None, "")?;
        for (path, schema, default) in std::mem::take(&mut parser.pending_defaults) {
            if let Err(why) = check_default(&schema, &default, &parser.named) {
                return Err(invalid(&path, why));
            }
        }
        Ok(AvroSchema {
            root,
            named: parser.named,
        })
    }

    /// The top-level schema node.
    pub fn root(&self) -> &Schema {
        &self.root
    }

    /// The definition of the named type `fullname`.
    pub fn named(&self, fullname: &str) -> Option<&NamedSchema> {
        self.named.get(fullname)
    }

    /// Every named type, by full name.
    pub fn named_types(&self) -> &BTreeMap<String, NamedSchema> {
        &self.named
    }

    /// The Parsing Canonical Form of the specification.
    pub fn canonical_form(&self) -> String {
        let mut out = String::new();
        self.write_form(
            &self.root,
            Form::Canonical,
            None,
            &mut BTreeSet::new(),
            &mut out,
        );
        out
    }

    /// The normalized form: full names, fixed attribute order, no whitespace, every
    /// attribute kept (see the module documentation). It parses back to an equal
    /// schema, and the registry de-duplicates on it.
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        self.write_form(
            &self.root,
            Form::Normalized,
            None,
            &mut BTreeSet::new(),
            &mut out,
        );
        out
    }

    /// The 64-bit Rabin fingerprint (CRC-64-AVRO) of the canonical form, as used by
    /// Avro's single-object encoding.
    pub fn fingerprint(&self) -> u64 {
        const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
            }
            *slot = fp;
        }
        let mut fp = EMPTY;
        for b in self.canonical_form().bytes() {
            fp = (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize];
        }
        fp
    }

    fn write_form(
        &self,
        schema: &Schema,
        form: Form,
        enclosing_ns: Option<&str>,
        seen: &mut BTreeSet<String>,
        out: &mut String,
    ) {
        match schema {
            Schema::Primitive { kind, props, .. } => {
                if form == Form::Canonical || props.is_empty() {
                    write_json_str(out, kind.name());
                } else {
                    out.push_str("{\"type\":");
                    write_json_str(out, kind.name());
                    write_props(out, props);
                    out.push('}');
                }
            }
            Schema::Array { items, props } => {
                out.push_str("{\"type\":\"array\",\"items\":");
                self.write_form(items, form, enclosing_ns, seen, out);
                if form == Form::Normalized {
                    write_props(out, props);
                }
                out.push('}');
            }
            Schema::Map { values, props } => {
                out.push_str("{\"type\":\"map\",\"values\":");
                self.write_form(values, form, enclosing_ns, seen, out);
                if form == Form::Normalized {
                    write_props(out, props);
                }
                out.push('}');
            }
            Schema::Union(branches) => {
                out.push('[');
                for (i, b) in branches.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.write_form(b, form, enclosing_ns, seen, out);
                }
                out.push(']');
            }
            Schema::Named(fullname) => {
                let Some(def) = self.named.get(fullname) else {
                    write_json_str(out, fullname);
                    return;
                };
                if !seen.insert(fullname.clone()) {
                    write_json_str(out, fullname);
                    return;
                }
                self.write_named(def, form, enclosing_ns, seen, out);
            }
        }
    }

    fn write_named(
        &self,
        def: &NamedSchema,
        form: Form,
        enclosing_ns: Option<&str>,
        seen: &mut BTreeSet<String>,
        out: &mut String,
    ) {
        let ns = def.namespace();
        out.push_str("{\"name\":");
        write_json_str(out, &def.fullname);
        out.push_str(",\"type\":");
        match &def.kind {
            NamedKind::Record { error, fields } => {
                let ty = if form == Form::Normalized && *error {
                    "error"
                } else {
                    "record"
                };
                write_json_str(out, ty);
                out.push_str(",\"fields\":[");
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"name\":");
                    write_json_str(out, &f.name);
                    out.push_str(",\"type\":");
                    self.write_form(&f.schema, form, ns, seen, out);
                    if form == Form::Normalized {
                        let mut extra = f.props.clone();
                        if !f.aliases.is_empty() {
                            extra.insert("aliases".into(), strings(&f.aliases));
                        }
                        if let Some(d) = &f.default {
                            extra.insert("default".into(), d.clone());
                        }
                        if let Some(d) = &f.doc {
                            extra.insert("doc".into(), Value::String(d.clone()));
                        }
                        write_props(out, &extra);
                    }
                    out.push('}');
                }
                out.push(']');
            }
            NamedKind::Enum { symbols, .. } => {
                out.push_str("\"enum\",\"symbols\":[");
                for (i, s) in symbols.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json_str(out, s);
                }
                out.push(']');
            }
            NamedKind::Fixed { size, .. } => {
                let _ = write!(out, "\"fixed\",\"size\":{size}");
            }
        }
        if form == Form::Normalized {
            let mut extra = def.props.clone();
            if !def.aliases.is_empty() {
                extra.insert("aliases".into(), strings(&def.aliases));
            }
            if let Some(d) = &def.doc {
                extra.insert("doc".into(), Value::String(d.clone()));
            }
            if let NamedKind::Enum {
                default: Some(d), ..
            } = &def.kind
            {
                extra.insert("default".into(), Value::String(d.clone()));
            }
            // A type in the null namespace inside a namespaced one would otherwise be
            // read back in the enclosing namespace.
            if ns.is_none() && enclosing_ns.is_some() {
                extra.insert("namespace".into(), Value::String(String::new()));
            }
            write_props(out, &extra);
        }
        out.push('}');
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Canonical,
    Normalized,
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

fn write_json_str(out: &mut String, s: &str) {
    // serde_json escapes only what JSON requires (", \ and control characters),
    // which is the specification's [STRINGS] rule.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn write_props(out: &mut String, props: &Props) {
    for (k, v) in props {
        out.push(',');
        write_json_str(out, k);
        out.push(':');
        write_json_value(out, v);
    }
}

/// JSON with object keys sorted, whatever serde_json's map ordering is.
fn write_json_value(out: &mut String, v: &Value) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_str(out, k);
                out.push(':');
                write_json_value(out, &map[k]);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_value(out, item);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn invalid(path: &str, message: impl Into<String>) -> RegistryError {
    RegistryError::InvalidSchema {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        message: message.into(),
    }
}

/// Recursive-descent parser; `named` grows as definitions are met.
#[derive(Default)]
struct Parser {
    named: BTreeMap<String, NamedSchema>,
    /// Field defaults, checked once every type is complete: (path, type, default).
    pending_defaults: Vec<(String, Schema, Value)>,
}

impl Parser {
    fn parse(&mut self, v: &Value, ns: Option<&str>, path: &str) -> Result<Schema, RegistryError> {
        match v {
            Value::String(name) => self.resolve(name, ns, path),
            Value::Array(branches) => self.parse_union(branches, ns, path),
            Value::Object(obj) => self.parse_object(obj, ns, path),
            other => Err(invalid(
                path,
                format!("a schema must be a string, an object or an array, not {other}"),
            )),
        }
    }

    /// A type name in string form: a primitive, or a reference to a defined type.
    fn resolve(&self, name: &str, ns: Option<&str>, path: &str) -> Result<Schema, RegistryError> {
        if let Some(kind) = PrimitiveType::from_name(name) {
            return Ok(Schema::primitive(kind));
        }
        if name.contains('.') {
            if self.named.contains_key(name) {
                return Ok(Schema::Named(name.to_owned()));
            }
        } else {
            if let Some(ns) = ns {
                let full = format!("{ns}.{name}");
                if self.named.contains_key(&full) {
                    return Ok(Schema::Named(full));
                }
            }
            // Like Avro's Java parser, fall back to the null namespace.
            if self.named.contains_key(name) {
                return Ok(Schema::Named(name.to_owned()));
            }
        }
        let shown = match (ns, name.contains('.')) {
            (Some(ns), false) => format!("'{name}' (looked up as '{ns}.{name}' and '{name}')"),
            _ => format!("'{name}'"),
        };
        Err(invalid(
            path,
            format!(
                "unknown type name {shown}: not a primitive type nor a named type defined before this point"
            ),
        ))
    }

    fn parse_union(
        &mut self,
        branches: &[Value],
        ns: Option<&str>,
        path: &str,
    ) -> Result<Schema, RegistryError> {
        let mut out = Vec::with_capacity(branches.len());
        let mut keys = BTreeSet::new();
        for (i, b) in branches.iter().enumerate() {
            let bpath = format!("{path}/{i}");
            let s = self.parse(b, ns, &bpath)?;
            let key = match &s {
                Schema::Union(_) => {
                    return Err(invalid(
                        &bpath,
                        "a union may not immediately contain another union",
                    ));
                }
                Schema::Primitive { kind, .. } => kind.name().to_owned(),
                Schema::Array { .. } => "array".to_owned(),
                Schema::Map { .. } => "map".to_owned(),
                Schema::Named(full) => full.clone(),
            };
            if !keys.insert(key.clone()) {
                return Err(invalid(
                    &bpath,
                    format!(
                        "duplicate '{key}' in union: a union may contain only one branch of each type (named types: of each name)"
                    ),
                ));
            }
            out.push(s);
        }
        Ok(Schema::Union(out))
    }

    fn parse_object(
        &mut self,
        obj: &Map<String, Value>,
        ns: Option<&str>,
        path: &str,
    ) -> Result<Schema, RegistryError> {
        let ty = obj
            .get("type")
            .ok_or_else(|| invalid(path, "missing 'type' attribute"))?;
        let ty = match ty {
            Value::String(t) => t.as_str(),
            // `{"type": {...}}` or `{"type": [...]}`: a schema wrapped in an object.
            Value::Object(_) | Value::Array(_) => {
                return self.parse(ty, ns, &format!("{path}/type"));
            }
            other => {
                return Err(invalid(
                    &format!("{path}/type"),
                    format!("'type' must be a string, an object or an array, not {other}"),
                ));
            }
        };
        if let Some(kind) = PrimitiveType::from_name(ty) {
            let props = props_except(obj, &["type"]);
            let logical = logical_for_primitive(kind, &props);
            return Ok(Schema::Primitive {
                kind,
                logical,
                props,
            });
        }
        match ty {
            "record" | "error" | "enum" | "fixed" => self.parse_named(obj, ty, ns, path),
            "array" => {
                let items = obj
                    .get("items")
                    .ok_or_else(|| invalid(path, "array schema without 'items'"))?;
                let items = self.parse(items, ns, &format!("{path}/items"))?;
                Ok(Schema::Array {
                    items: Box::new(items),
                    props: props_except(obj, &["type", "items"]),
                })
            }
            "map" => {
                let values = obj
                    .get("values")
                    .ok_or_else(|| invalid(path, "map schema without 'values'"))?;
                let values = self.parse(values, ns, &format!("{path}/values"))?;
                Ok(Schema::Map {
                    values: Box::new(values),
                    props: props_except(obj, &["type", "values"]),
                })
            }
            // `{"type": "com.example.Named"}`: a reference in object form.
            other => self.resolve(other, ns, &format!("{path}/type")),
        }
    }

    fn parse_named(
        &mut self,
        obj: &Map<String, Value>,
        ty: &str,
        enclosing_ns: Option<&str>,
        path: &str,
    ) -> Result<Schema, RegistryError> {
        let fullname = full_name(obj, enclosing_ns, path)?;
        if self.named.contains_key(&fullname) {
            return Err(invalid(
                &format!("{path}/name"),
                format!("the name '{fullname}' is defined twice"),
            ));
        }
        let ns = fullname.rsplit_once('.').map(|(ns, _)| ns.to_owned());
        let aliases = match obj.get("aliases") {
            None => Vec::new(),
            Some(v) => {
                let apath = format!("{path}/aliases");
                string_list(v, &apath)?
                    .into_iter()
                    .map(|a| {
                        check_full_name(&a, &apath)?;
                        Ok(match (&ns, a.contains('.')) {
                            (Some(ns), false) => format!("{ns}.{a}"),
                            _ => a,
                        })
                    })
                    .collect::<Result<Vec<_>, RegistryError>>()?
            }
        };
        let doc = optional_string(obj, "doc", path)?;
        let mut def = NamedSchema {
            fullname: fullname.clone(),
            aliases,
            doc,
            kind: NamedKind::Record {
                error: ty == "error",
                fields: Vec::new(),
            },
            props: Props::new(),
        };
        match ty {
            "record" | "error" => {
                def.props = props_except(
                    obj,
                    &["type", "name", "namespace", "aliases", "doc", "fields"],
                );
                // Registered before the fields, so that they may refer to it.
                self.named.insert(fullname.clone(), def);
                let fields = self.parse_fields(obj, ns.as_deref(), path)?;
                if let Some(NamedSchema {
                    kind: NamedKind::Record { fields: slot, .. },
                    ..
                }) = self.named.get_mut(&fullname)
                {
                    *slot = fields;
                }
            }
            "enum" => {
                let spath = format!("{path}/symbols");
                let symbols = string_list(
                    obj.get("symbols")
                        .ok_or_else(|| invalid(path, "enum schema without 'symbols'"))?,
                    &spath,
                )?;
                let mut seen = BTreeSet::new();
                for (i, s) in symbols.iter().enumerate() {
                    if !is_valid_name(s) {
                        return Err(invalid(
                            &format!("{spath}/{i}"),
                            format!(
                                "invalid enum symbol '{s}': symbols must match [A-Za-z_][A-Za-z0-9_]*"
                            ),
                        ));
                    }
                    if !seen.insert(s.as_str()) {
                        return Err(invalid(
                            &format!("{spath}/{i}"),
                            format!("duplicate enum symbol '{s}'"),
                        ));
                    }
                }
                let default = match obj.get("default") {
                    None => None,
                    Some(Value::String(d)) if symbols.contains(d) => Some(d.clone()),
                    Some(other) => {
                        return Err(invalid(
                            &format!("{path}/default"),
                            format!("enum default {other} is not one of the symbols"),
                        ));
                    }
                };
                def.kind = NamedKind::Enum { symbols, default };
                def.props = props_except(
                    obj,
                    &[
                        "type",
                        "name",
                        "namespace",
                        "aliases",
                        "doc",
                        "symbols",
                        "default",
                    ],
                );
                self.named.insert(fullname.clone(), def);
            }
            _ => {
                let size = match obj.get("size") {
                    Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or(0),
                    Some(other) => {
                        return Err(invalid(
                            &format!("{path}/size"),
                            format!("fixed size must be a non-negative integer, not {other}"),
                        ));
                    }
                    None => return Err(invalid(path, "fixed schema without 'size'")),
                };
                def.props = props_except(
                    obj,
                    &["type", "name", "namespace", "aliases", "doc", "size"],
                );
                let logical = logical_for_fixed(size, &def.props);
                def.kind = NamedKind::Fixed { size, logical };
                self.named.insert(fullname.clone(), def);
            }
        }
        Ok(Schema::Named(fullname))
    }

    fn parse_fields(
        &mut self,
        obj: &Map<String, Value>,
        ns: Option<&str>,
        path: &str,
    ) -> Result<Vec<Field>, RegistryError> {
        let Some(Value::Array(items)) = obj.get("fields") else {
            return Err(invalid(path, "record schema without a 'fields' array"));
        };
        let mut fields = Vec::with_capacity(items.len());
        let mut names = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let fpath = format!("{path}/fields/{i}");
            let Value::Object(f) = item else {
                return Err(invalid(&fpath, "a field must be a JSON object"));
            };
            let name = match f.get("name") {
                Some(Value::String(n)) => n.clone(),
                _ => return Err(invalid(&fpath, "field without a 'name' string")),
            };
            if !is_valid_name(&name) {
                return Err(invalid(
                    &format!("{fpath}/name"),
                    format!("invalid field name '{name}': names must match [A-Za-z_][A-Za-z0-9_]*"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(invalid(
                    &format!("{fpath}/name"),
                    format!("duplicate field name '{name}'"),
                ));
            }
            let ty = f
                .get("type")
                .ok_or_else(|| invalid(&fpath, format!("field '{name}' has no 'type'")))?;
            let schema = self.parse(ty, ns, &format!("{fpath}/type"))?;
            let aliases = match f.get("aliases") {
                None => Vec::new(),
                Some(v) => string_list(v, &format!("{fpath}/aliases"))?,
            };
            let doc = optional_string(f, "doc", &fpath)?;
            if let Some(order) = f.get("order")
                && !matches!(order.as_str(), Some("ascending" | "descending" | "ignore"))
            {
                return Err(invalid(
                    &format!("{fpath}/order"),
                    format!(
                        "field order must be \"ascending\", \"descending\" or \"ignore\", not {order}"
                    ),
                ));
            }
            let default = f.get("default").cloned();
            if let Some(d) = &default {
                self.pending_defaults
                    .push((format!("{fpath}/default"), schema.clone(), d.clone()));
            }
            fields.push(Field {
                props: props_except(f, &["name", "type", "default", "aliases", "doc"]),
                name,
                aliases,
                doc,
                schema,
                default,
            });
        }
        Ok(fields)
    }
}

fn props_except(obj: &Map<String, Value>, reserved: &[&str]) -> Props {
    obj.iter()
        .filter(|(k, _)| !reserved.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn optional_string(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<String>, RegistryError> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(
            &format!("{path}/{key}"),
            format!("'{key}' must be a string, not {other}"),
        )),
    }
}

fn string_list(v: &Value, path: &str) -> Result<Vec<String>, RegistryError> {
    let Value::Array(items) = v else {
        return Err(invalid(
            path,
            format!("expected an array of strings, not {v}"),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(invalid(
                &format!("{path}/{i}"),
                format!("expected a string, not {other}"),
            )),
        })
        .collect()
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_full_name(full: &str, path: &str) -> Result<(), RegistryError> {
    if full.split('.').all(is_valid_name) {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!(
                "invalid name '{full}': each dot-separated part must match [A-Za-z_][A-Za-z0-9_]*"
            ),
        ))
    }
}

/// The full name of a named type definition, from `name`, `namespace` and the
/// enclosing namespace (spec: "Names").
fn full_name(
    obj: &Map<String, Value>,
    enclosing_ns: Option<&str>,
    path: &str,
) -> Result<String, RegistryError> {
    let npath = format!("{path}/name");
    let name = match obj.get("name") {
        Some(Value::String(n)) => n.as_str(),
        Some(other) => {
            return Err(invalid(
                &npath,
                format!("'name' must be a string, not {other}"),
            ));
        }
        None => return Err(invalid(path, "named type without a 'name'")),
    };
    let full = if name.contains('.') {
        name.to_owned()
    } else {
        let ns = match obj.get("namespace") {
            Some(Value::String(ns)) => Some(ns.as_str()),
            Some(Value::Null) | None => enclosing_ns,
            Some(other) => {
                return Err(invalid(
                    &format!("{path}/namespace"),
                    format!("'namespace' must be a string, not {other}"),
                ));
            }
        };
        match ns {
            Some(ns) if !ns.is_empty() => {
                check_full_name(ns, &format!("{path}/namespace"))?;
                format!("{ns}.{name}")
            }
            _ => name.to_owned(),
        }
    };
    check_full_name(&full, &npath)?;
    let simple = full.rsplit('.').next().unwrap_or(&full);
    if PrimitiveType::from_name(simple).is_some() {
        return Err(invalid(
            &npath,
            format!("'{simple}' is a primitive type name and cannot name a type"),
        ));
    }
    Ok(full)
}

fn prop_u32(props: &Props, key: &str) -> Option<Option<u32>> {
    match props.get(key) {
        None => Some(None),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some),
    }
}

fn decimal(props: &Props, max_precision: Option<u64>) -> Option<LogicalType> {
    let precision = prop_u32(props, "precision")??;
    let scale = prop_u32(props, "scale")?.unwrap_or(0);
    if precision == 0 || scale > precision {
        return None;
    }
    if max_precision.is_some_and(|max| u64::from(precision) > max) {
        return None;
    }
    Some(LogicalType::Decimal { precision, scale })
}

fn logical_for_primitive(kind: PrimitiveType, props: &Props) -> Option<LogicalType> {
    let name = props.get("logicalType")?.as_str()?;
    use PrimitiveType as P;
    match (name, kind) {
        ("decimal", P::Bytes) => decimal(props, None),
        ("uuid", P::String) => Some(LogicalType::Uuid),
        ("date", P::Int) => Some(LogicalType::Date),
        ("time-millis", P::Int) => Some(LogicalType::TimeMillis),
        ("time-micros", P::Long) => Some(LogicalType::TimeMicros),
        ("timestamp-millis", P::Long) => Some(LogicalType::TimestampMillis),
        ("timestamp-micros", P::Long) => Some(LogicalType::TimestampMicros),
        ("local-timestamp-millis", P::Long) => Some(LogicalType::LocalTimestampMillis),
        ("local-timestamp-micros", P::Long) => Some(LogicalType::LocalTimestampMicros),
        _ => None,
    }
}

fn logical_for_fixed(size: u64, props: &Props) -> Option<LogicalType> {
    match props.get("logicalType")?.as_str()? {
        // The most digits a two's-complement number of `size` bytes holds:
        // floor(log10(2^(8*size-1) - 1)).
        "decimal" if size > 0 => {
            let bits = (8 * size).saturating_sub(1) as f64;
            let max = (bits * std::f64::consts::LOG10_2).floor() as u64;
            decimal(props, Some(max))
        }
        "duration" if size == 12 => Some(LogicalType::Duration),
        _ => None,
    }
}

/// Whether `value` is a valid default for `schema` (spec: "Complex Types", field
/// defaults). `Err` says why not.
fn check_default(
    schema: &Schema,
    value: &Value,
    named: &BTreeMap<String, NamedSchema>,
) -> Result<(), String> {
    let mismatch = |expected: &str| {
        Err(format!(
            "default value {} does not match the field's type: expected {expected}",
            shorten(value)
        ))
    };
    match schema {
        Schema::Primitive { kind, .. } => {
            let ok = match kind {
                PrimitiveType::Null => value.is_null(),
                PrimitiveType::Boolean => value.is_boolean(),
                PrimitiveType::Int => value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                PrimitiveType::Long => value.is_i64(),
                PrimitiveType::Float | PrimitiveType::Double => value.is_number(),
                PrimitiveType::Bytes => value
                    .as_str()
                    .is_some_and(|s| s.chars().all(|c| (c as u32) < 256)),
                PrimitiveType::String => value.is_string(),
            };
            if ok {
                Ok(())
            } else {
                let expected = match kind {
                    PrimitiveType::Int => "an int (32-bit integer)",
                    PrimitiveType::Long => "a long (64-bit integer)",
                    PrimitiveType::Float | PrimitiveType::Double => "a number",
                    PrimitiveType::Bytes => "a string of code points 0-255 (bytes)",
                    PrimitiveType::String => "a string",
                    PrimitiveType::Boolean => "true or false",
                    PrimitiveType::Null => "null",
                };
                mismatch(expected)
            }
        }
        Schema::Array { items, .. } => match value {
            Value::Array(vs) => vs.iter().try_for_each(|v| check_default(items, v, named)),
            _ => mismatch("a JSON array"),
        },
        Schema::Map { values, .. } => match value {
            Value::Object(m) => m.values().try_for_each(|v| check_default(values, v, named)),
            _ => mismatch("a JSON object"),
        },
        Schema::Union(branches) => match branches.first() {
            Some(first) => check_default(first, value, named).map_err(|e| {
                format!("{e} (a union field's default must match the union's first branch)")
            }),
            None => Err("a field of an empty union cannot have a default".into()),
        },
        Schema::Named(full) => {
            let Some(def) = named.get(full) else {
                return Err(format!("unknown type '{full}'"));
            };
            match &def.kind {
                NamedKind::Record { fields, .. } => {
                    let Value::Object(m) = value else {
                        return mismatch(&format!("a JSON object for record '{full}'"));
                    };
                    for f in fields {
                        match (m.get(&f.name), &f.default) {
                            (Some(v), _) => check_default(&f.schema, v, named)
                                .map_err(|e| format!("field '{}': {e}", f.name))?,
                            (None, Some(_)) => {}
                            (None, None) => {
                                return Err(format!(
                                    "default value {} lacks field '{}' of record '{full}', which has no default",
                                    shorten(value),
                                    f.name
                                ));
                            }
                        }
                    }
                    Ok(())
                }
                NamedKind::Enum { symbols, .. } => match value.as_str() {
                    Some(s) if symbols.iter().any(|x| x == s) => Ok(()),
                    _ => mismatch(&format!("one of the symbols of enum '{full}'")),
                },
                NamedKind::Fixed { size, .. } => match value.as_str() {
                    Some(s)
                        if s.chars().count() as u64 == *size
                            && s.chars().all(|c| (c as u32) < 256) =>
                    {
                        Ok(())
                    }
                    _ => mismatch(&format!(
                        "a string of {size} code points 0-255 for fixed '{full}'"
                    )),
                },
            }
        }
    }
}

fn shorten(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AvroSchema {
        AvroSchema::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn parse_err(text: &str) -> String {
        match AvroSchema::parse(text) {
            Ok(s) => panic!("expected an error for {text}, parsed {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn schemas_dir() -> std::path::PathBuf {
        // tests may run from the scratch crate or the main crate: find the repo's schemas.
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"))
            .canonicalize()
            .or_else(|_| {
                std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../main/schemas"))
                    .canonicalize()
            })
            .expect("schemas directory")
    }

    #[test]
    fn primitives_in_both_forms() {
        for p in [
            "null", "boolean", "int", "long", "float", "double", "bytes", "string",
        ] {
            let a = parse(&format!("\"{p}\""));
            let b = parse(&format!("{{\"type\": \"{p}\"}}"));
            assert_eq!(a.canonical_form(), format!("\"{p}\""));
            assert_eq!(a.canonical_form(), b.canonical_form());
            assert_eq!(a.normalized(), b.normalized());
        }
    }

    #[test]
    fn canonical_form_follows_the_spec() {
        let s = parse(
            r#"{
              "type": "record", "name": "Order", "namespace": "com.example",
              "doc": "an order", "aliases": ["OldOrder"],
              "fields": [
                {"name": "id", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "x"},
                {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["A", "B"], "default": "A"}},
                {"name": "hash", "type": {"type": "fixed", "name": "other.Hash", "size": 16}},
                {"name": "tags", "type": {"values": "string", "type": "map"}},
                {"name": "again", "type": ["null", "Status", "other.Hash"], "default": null},
                {"name": "items", "type": {"type": "array", "items": "Order"}, "default": []}
              ]
            }"#,
        );
        assert_eq!(
            s.canonical_form(),
            r#"{"name":"com.example.Order","type":"record","fields":[{"name":"id","type":"long"},{"name":"status","type":{"name":"com.example.Status","type":"enum","symbols":["A","B"]}},{"name":"hash","type":{"name":"other.Hash","type":"fixed","size":16}},{"name":"tags","type":{"type":"map","values":"string"}},{"name":"again","type":["null","com.example.Status","other.Hash"]},{"name":"items","type":{"type":"array","items":"com.example.Order"}}]}"#
        );
    }

    #[test]
    fn canonical_form_escapes_only_what_json_needs() {
        let s = parse(r#"{"type":"enum","name":"E","symbols":["A"],"doc":"caf\u00e9 \"q\""}"#);
        assert_eq!(
            s.canonical_form(),
            r#"{"name":"E","type":"enum","symbols":["A"]}"#
        );
        assert!(
            s.normalized().contains(r#""doc":"café \"q\"""#),
            "{}",
            s.normalized()
        );
    }

    #[test]
    fn normalized_form_keeps_semantics_and_round_trips() {
        let text = r#"{"type":"record","name":"R","namespace":"a.b","fields":[
            {"name":"x","type":"int","default":1,"aliases":["y"],"order":"descending"},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["P","Q"],"default":"Q"}},
            {"name":"n","type":{"type":"record","name":"Inner","namespace":"","fields":[]}},
            {"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":5,"scale":2}}
        ], "connect.name": "a.b.R"}"#;
        let s = parse(text);
        let n = s.normalized();
        assert!(n.starts_with(r#"{"name":"a.b.R","type":"record","fields":[{"name":"x","type":"int","aliases":["y"],"default":1,"order":"descending"}"#), "{n}");
        assert!(
            n.contains(r#"{"name":"Inner","type":"record","fields":[],"namespace":""}"#),
            "{n}"
        );
        let again = parse(&n);
        assert_eq!(again, s);
        assert_eq!(again.normalized(), n);
        // Layout, attribute order and namespace spelling do not change it.
        let respelled = parse(
            r#"{"fields":[
            {"order":"descending","aliases":["y"],"default":1,"type":{"type":"int"},"name":"x"},
            {"name":"e","type":{"type":"enum","name":"a.b.E","symbols":["P","Q"],"default":"Q"}},
            {"name":"n","type":{"type":"record","name":"Inner","namespace":"","fields":[]}},
            {"name":"d","type":{"precision":5,"type":"bytes","logicalType":"decimal","scale":2}}
        ], "connect.name": "a.b.R", "name":"a.b.R", "type":"record"}"#,
        );
        assert_eq!(respelled.normalized(), n);
        // A changed default is a different schema for the registry, not for PCF.
        let changed = parse(&text.replace("\"default\":1", "\"default\":2"));
        assert_ne!(changed.normalized(), n);
        assert_eq!(changed.canonical_form(), s.canonical_form());
    }

    #[test]
    fn namespaces_and_fullnames() {
        let s = parse(
            r#"{"type":"record","name":"Outer","namespace":"ns1","fields":[
                {"name":"a","type":{"type":"record","name":"Inner","fields":[]}},
                {"name":"b","type":{"type":"record","name":"ns2.Other","fields":[
                    {"name":"c","type":{"type":"enum","name":"Deep","symbols":["X"]}}
                ]}},
                {"name":"d","type":{"type":"fixed","name":"F","namespace":"ns3","size":2}},
                {"name":"e","type":"Inner"},
                {"name":"f","type":"ns2.Deep"},
                {"name":"g","type":"ns3.F"}
            ]}"#,
        );
        let names: Vec<&str> = s.named_types().keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["ns1.Inner", "ns1.Outer", "ns2.Deep", "ns2.Other", "ns3.F"]
        );
        let outer = s.named("ns1.Outer").unwrap();
        assert_eq!(outer.simple_name(), "Outer");
        assert_eq!(outer.namespace(), Some("ns1"));
        // "Deep" is in ns2 (the namespace of its enclosing Other), so the short
        // reference "Deep" from ns1 does not resolve.
        let err = parse_err(
            r#"{"type":"record","name":"Outer","namespace":"ns1","fields":[
                {"name":"b","type":{"type":"record","name":"ns2.Other","fields":[
                    {"name":"c","type":{"type":"enum","name":"Deep","symbols":["X"]}}]}},
                {"name":"f","type":"Deep"}]}"#,
        );
        assert!(err.contains("unknown type name 'Deep'"), "{err}");
        assert!(err.contains("/fields/1/type"), "{err}");
    }

    #[test]
    fn recursive_types_and_aliases() {
        let s = parse(
            r#"{"type":"record","name":"Node","namespace":"list","aliases":["OldNode","x.Y"],"fields":[
                {"name":"value","type":"long","aliases":["v"]},
                {"name":"next","type":["null","Node"],"default":null}
            ]}"#,
        );
        let node = s.named("list.Node").unwrap();
        assert_eq!(node.aliases, ["list.OldNode", "x.Y"]);
        let NamedKind::Record { fields, .. } = &node.kind else {
            panic!()
        };
        assert_eq!(fields[0].aliases, ["v"]);
        assert_eq!(
            fields[1].schema,
            Schema::Union(vec![
                Schema::primitive(PrimitiveType::Null),
                Schema::Named("list.Node".into())
            ])
        );
        assert_eq!(
            s.canonical_form(),
            r#"{"name":"list.Node","type":"record","fields":[{"name":"value","type":"long"},{"name":"next","type":["null","list.Node"]}]}"#
        );
    }

    #[test]
    fn logical_types_valid_and_ignored() {
        let s = parse(
            r#"{"type":"record","name":"L","fields":[
                {"name":"a","type":{"type":"int","logicalType":"date"}},
                {"name":"b","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}},
                {"name":"c","type":{"type":"bytes","logicalType":"decimal","precision":2,"scale":4}},
                {"name":"d","type":{"type":"string","logicalType":"uuid"}},
                {"name":"e","type":{"type":"fixed","name":"D","size":12,"logicalType":"duration"}},
                {"name":"f","type":{"type":"fixed","name":"Dec","size":2,"logicalType":"decimal","precision":5}},
                {"name":"g","type":{"type":"string","logicalType":"no-such-type"}},
                {"name":"h","type":{"type":"int","logicalType":"timestamp-millis"}}
            ]}"#,
        );
        let NamedKind::Record { fields, .. } = &s.named("L").unwrap().kind else {
            panic!()
        };
        let logical = |i: usize| match &fields[i].schema {
            Schema::Primitive { logical, .. } => *logical,
            Schema::Named(n) => match &s.named(n).unwrap().kind {
                NamedKind::Fixed { logical, .. } => *logical,
                _ => None,
            },
            _ => None,
        };
        assert_eq!(logical(0), Some(LogicalType::Date));
        assert_eq!(
            logical(1),
            Some(LogicalType::Decimal {
                precision: 4,
                scale: 2
            })
        );
        assert_eq!(logical(2), None, "scale > precision is ignored");
        assert_eq!(logical(3), Some(LogicalType::Uuid));
        assert_eq!(logical(4), Some(LogicalType::Duration));
        assert_eq!(logical(5), None, "2 bytes hold at most 4 digits");
        assert_eq!(logical(6), None);
        assert_eq!(logical(7), None, "timestamp-millis needs a long");
    }

    #[test]
    fn defaults_are_checked() {
        let ok = [
            (r#""int""#, "5"),
            (r#""long""#, "-9007199254740993"),
            (r#""double""#, "1"),
            (r#""float""#, "1.5"),
            (r#""bytes""#, r#""\u00ff""#),
            (r#""string""#, r#""x""#),
            (r#""boolean""#, "true"),
            (r#"["null","string"]"#, "null"),
            (r#"["string","null"]"#, r#""a""#),
            (r#"{"type":"array","items":"int"}"#, "[1,2]"),
            (r#"{"type":"map","values":"int"}"#, r#"{"a":1}"#),
            (
                r#"{"type":"enum","name":"E","symbols":["A","B"]}"#,
                r#""B""#,
            ),
            (r#"{"type":"fixed","name":"F","size":2}"#, r#""ab""#),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"x","type":"int"},{"name":"y","type":"int","default":0}]}"#,
                r#"{"x":1}"#,
            ),
        ];
        for (ty, default) in ok {
            parse(&format!(
                r#"{{"type":"record","name":"T","fields":[{{"name":"f","type":{ty},"default":{default}}}]}}"#
            ));
        }
        let bad = [
            (r#""int""#, "\"5\"", "expected an int"),
            (r#""int""#, "3000000000", "expected an int"),
            (r#""long""#, "1.5", "expected a long"),
            (r#""string""#, "null", "expected a string"),
            (r#""boolean""#, "0", "true or false"),
            (r#""bytes""#, r#""\u0100""#, "code points 0-255"),
            (r#"["null","string"]"#, r#""a""#, "first branch"),
            (
                r#"{"type":"array","items":"int"}"#,
                r#"["a"]"#,
                "expected an int",
            ),
            (r#"{"type":"map","values":"int"}"#, "[]", "a JSON object"),
            (
                r#"{"type":"enum","name":"E","symbols":["A"]}"#,
                r#""Z""#,
                "symbols",
            ),
            (
                r#"{"type":"fixed","name":"F","size":2}"#,
                r#""abc""#,
                "2 code points",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"x","type":"int"}]}"#,
                "{}",
                "lacks field 'x'",
            ),
        ];
        for (ty, default, want) in bad {
            let err = parse_err(&format!(
                r#"{{"type":"record","name":"T","fields":[{{"name":"f","type":{ty},"default":{default}}}]}}"#
            ));
            assert!(err.contains(want), "{ty} / {default}: {err}");
            assert!(err.contains("/fields/0/default"), "{err}");
        }
    }

    #[test]
    fn invalid_schemas_are_explained() {
        let cases = [
            ("nope", "not valid JSON"),
            ("42", "must be a string, an object or an array"),
            (r#""Unknown""#, "unknown type name 'Unknown'"),
            (
                r#"{"type":"record","name":"R"}"#,
                "without a 'fields' array",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"a","type":"long"}]}"#,
                "duplicate field name 'a'",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"a"}]}"#,
                "field 'a' has no 'type'",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"1a","type":"int"}]}"#,
                "invalid field name '1a'",
            ),
            (
                r#"{"type":"record","name":"int","fields":[]}"#,
                "primitive type name",
            ),
            (
                r#"{"type":"record","name":"a-b","fields":[]}"#,
                "invalid name 'a-b'",
            ),
            (
                r#"{"type":"enum","name":"E","symbols":["A","A"]}"#,
                "duplicate enum symbol 'A'",
            ),
            (
                r#"{"type":"enum","name":"E","symbols":["A"],"default":"B"}"#,
                "not one of the symbols",
            ),
            (r#"{"type":"enum","name":"E"}"#, "without 'symbols'"),
            (r#"{"type":"fixed","name":"F"}"#, "without 'size'"),
            (
                r#"{"type":"fixed","name":"F","size":-1}"#,
                "non-negative integer",
            ),
            (r#"{"type":"array"}"#, "without 'items'"),
            (r#"{"type":"map"}"#, "without 'values'"),
            (r#"["int","int"]"#, "duplicate 'int' in union"),
            (
                r#"["null",["int"]]"#,
                "may not immediately contain another union",
            ),
            (
                r#"[{"type":"array","items":"int"},{"type":"array","items":"long"}]"#,
                "duplicate 'array'",
            ),
            (
                r#"[{"type":"fixed","name":"F","size":1},{"type":"fixed","name":"F","size":1}]"#,
                "defined twice",
            ),
            (r#"{"name":"x"}"#, "missing 'type'"),
            (r#"{"type":"whatever"}"#, "unknown type name 'whatever'"),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","order":"up"}]}"#,
                "field order",
            ),
        ];
        for (text, want) in cases {
            let err = parse_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
        // Same name in different namespaces is fine in a union.
        parse(r#"[{"type":"fixed","name":"a.F","size":1},{"type":"fixed","name":"b.F","size":1}]"#);
    }

    #[test]
    fn error_type_is_a_record() {
        let s = parse(r#"{"type":"error","name":"Oops","fields":[{"name":"m","type":"string"}]}"#);
        assert!(s.canonical_form().contains(r#""type":"record""#));
        assert!(s.normalized().contains(r#""type":"error""#));
    }

    #[test]
    fn fingerprint_matches_the_spec_examples() {
        // CRC-64-AVRO of the canonical form; values from Avro's test suite
        // (share/test/data/schema-tests.txt).
        assert_eq!(parse(r#""null""#).fingerprint(), 7195948357588979594);
        assert_eq!(parse(r#""int""#).fingerprint(), 8247732601305521295);
        assert_eq!(parse(r#""string""#).fingerprint(), 10304597078529344455);
    }

    #[test]
    fn repository_schemas_parse() {
        let mut n = 0;
        for entry in std::fs::read_dir(schemas_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "avsc") {
                let text = std::fs::read_to_string(&path).unwrap();
                let s = parse(&text);
                let again = parse(&s.normalized());
                assert_eq!(again, s, "{}", path.display());
                assert_eq!(
                    parse(&s.canonical_form()).canonical_form(),
                    s.canonical_form()
                );
                n += 1;
            }
        }
        assert!(n >= 5, "found {n} schemas");
    }
}
