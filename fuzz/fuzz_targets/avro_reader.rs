//! Reads arbitrary bytes as an Avro object container file: it must end in batches or a
//! clean error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tributary::formats::avro::read_bytes(data, 16);
});
