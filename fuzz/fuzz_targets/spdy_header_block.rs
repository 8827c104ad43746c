//! The (already inflated) SPDY header-block decoder on arbitrary bytes.
#![no_main]

use crius::streaming::spdy::parse_header_block;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_header_block(data);
});
