//! JSON lines: Arrow batches to JSON objects and back.
//!
//! Encoding ([`encode_json_lines`]) writes one object per row. Null values are written
//! as explicit `null` (the key is always present, so every line has the same keys);
//! timestamps are RFC 3339 strings (`…Z` for columns without a time zone, `…+hh:mm` for
//! columns with one); lists are arrays, structs and maps are objects, binary values are
//! hex strings.
//!
//! Decoding ([`JsonDecoder`]) turns one record (one JSON object) at a time into rows of
//! a fixed schema. Each record is checked by a schema-aware scanner (one pass over its
//! bytes, no allocation on the good path) that decides whether the record is strict
//! JSON and whether its values fit the schema, converting each scalar value as it checks
//! it; a refused record is reported to [`BadRecords`] and leaves nothing behind, so one
//! bad record costs nothing to the others. The scanner writes each converted value
//! into its column as it checks it, lists, structs and maps included, and a refused
//! record is cut off the columns again: one pass in all. Only schemas
//! with a struct of two fields of the same name (and schemas without columns) have
//! arrow-json decode the accepted records in bulk; the scanner accepts a subset of what
//! arrow-json accepts (it mirrors arrow-json's rules, stricter where they are lenient,
//! and converts values as arrow-json does), and timestamps go through arrow-json as
//! text and are converted by the very function the scanner checks them with. A
//! property test holds the two ways to the same batches and refusals.
//!
//! A record must be UTF-8. The scanner checks each string's characters as it reads
//! them (ASCII runs are found with the string's end, a run that is not is checked
//! whole), and anything outside strings must be ASCII to be JSON: sources hand it the
//! bytes as they came, with no pass of their own over them.
//!
//! Value rules:
//! - Integers: a JSON number with an integral value in range (`1e3` and `2.0` are
//!   accepted, `1.5` is a schema mismatch) or a string holding an integer (`"42"`).
//! - Floats: a JSON number or a string holding one (`"NaN"`, `"inf"` included).
//! - Strings: a JSON string; numbers and booleans are accepted as their text.
//! - Timestamps (any unit, with or without time zone): an RFC 3339 / ISO 8601 string
//!   (one without an offset is read in the column's time zone, UTC if it has none), or
//!   milliseconds since the Unix epoch as a JSON number (or a string holding one),
//!   whatever the column's unit; fractions of a millisecond are kept where the unit
//!   allows, seconds are floored.
//! - Dates: `"YYYY-MM-DD"` or a number of days (Date32) / milliseconds (Date64).
//! - Decimals: a number or a string; binary: a hex string.
//! - A missing key is null; a null or missing value in a non-nullable field is a schema
//!   mismatch. Keys not in the schema are ignored (but must be valid JSON).
//!
//! [`BadRecords`]: crate::dlq::BadRecords

mod columns;
mod decode;
mod encode;
mod rules;
mod scanner;

pub use decode::{DEFAULT_CAPACITY, JsonDecoder};
pub use encode::encode_json_lines;
pub use scanner::MAX_DEPTH;
