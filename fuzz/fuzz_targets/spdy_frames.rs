//! The SPDY frame parser on arbitrary client bytes, fed in two chunks
//! (frames split across reads): it must return frames or errors, never
//! panic, loop or allocate without bound.
#![no_main]

use bytes::BytesMut;
use crius::streaming::spdy::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % (data.len().max(1)));
    let mut dec = Decoder::new();
    let mut buf = BytesMut::new();
    for chunk in [&data[..split], &data[split..]] {
        buf.extend_from_slice(chunk);
        // A bounded number of frames per chunk: each consumes input.
        for _ in 0..1024 {
            match dec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
});
