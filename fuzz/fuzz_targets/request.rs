//! Fuzzes the HTTP/1.1 request parser and the body decoder together, the way the
//! connection task drives them: bytes arrive in pieces (cut where the input's first
//! byte says), heads are parsed, bodies decoded, pipelined requests follow.
//!
//! Each parsed head also goes through what the application side does with it before
//! any Python runs: the request-target helpers (path and query, percent-decoding,
//! PATH_INFO under a prefix, the absolute-form authority) and the trusted-proxy
//! decision, with every forwarding header trusted from the peer.
//!
//! Checks: nothing panics; a request fed in pieces parses exactly as when fed whole;
//! the decoder never consumes more than it was given; limits hold; the target helpers
//! only ever shorten what they are given.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

use _tapster::http::target::{
    absolute_form_authority, collapse_leading_slashes, percent_decode, split_target, strip_prefix,
};
use _tapster::http::{BodyDecoder, HeadLimits, HeadParser, RequestHead};
use _tapster::proxy::{self, ProxyConfig, TrustedPeers, ALL_HEADERS, FORWARDED};

/// The target and proxy logic on one head: nothing panics, nothing grows.
fn application_side(head: &RequestHead) {
    let target = head.target();
    let (path, query) = split_target(target);
    assert!(path.len() + query.len() <= target.len());
    let decoded = percent_decode(path);
    assert!(decoded.len() <= path.len());
    let collapsed = collapse_leading_slashes(&decoded);
    let info = strip_prefix(collapsed, b"/app");
    assert!(collapsed.ends_with(info));
    if let Some(authority) = absolute_form_authority(target) {
        assert!(authority.len() < target.len());
    }
    // Every X-Forwarded header trusted, then Forwarded alone (they are exclusive).
    for headers in [ALL_HEADERS & !FORWARDED, FORWARDED] {
        let config = ProxyConfig {
            trusted: TrustedPeers::Everyone,
            count: 2,
            headers,
            clear_untrusted: true,
            log_untrusted: true,
        };
        let _ = proxy::decide(&config, head, "127.0.0.1", "http");
    }
}

/// What feeding `input` produced: per request, its target, fields and body, or the
/// status that refused it.
fn run(input: &[u8], piece: usize, limits: &HeadLimits) -> Vec<Result<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>), u16>> {
    let mut outcomes = Vec::new();
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::new();
    let mut decoder: Option<BodyDecoder> = None;
    let mut current: Option<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>)> = None;
    for chunk in input.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            if let Some(dec) = decoder.as_mut() {
                let mut body = Vec::new();
                let before = buf.len();
                match dec.decode(&buf, &mut |d| body.extend_from_slice(d)) {
                    Ok(progress) => {
                        assert!(progress.consumed <= before, "decoder consumed more than given");
                        let _ = buf.split_to(progress.consumed);
                        if let Some(cur) = current.as_mut() {
                            cur.2.extend_from_slice(&body);
                        }
                        if progress.done {
                            decoder = None;
                            outcomes.push(Ok(current.take().expect("request in progress")));
                            continue;
                        }
                        break;
                    }
                    Err(e) => {
                        outcomes.push(Err(e.status()));
                        return outcomes;
                    }
                }
            }
            match parser.parse(&mut buf, limits) {
                Ok(Some(head)) => {
                    assert!(head.wire_len() < limits.max_head_bytes);
                    assert!(head.fields().len() <= limits.max_headers);
                    application_side(&head);
                    let fields = head.fields().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
                    let request = (head.target().to_vec(), fields, Vec::new());
                    match BodyDecoder::new(head.framing, limits.max_body_bytes) {
                        Some(dec) => {
                            decoder = Some(dec);
                            current = Some(request);
                        }
                        None => outcomes.push(Ok(request)),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    outcomes.push(Err(e.status()));
                    return outcomes;
                }
            }
        }
    }
    outcomes
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let limits = HeadLimits {
        max_head_bytes: 2048,
        max_request_line: 512,
        max_headers: 20,
        max_body_bytes: 4096,
    };
    let whole = run(input, input.len(), &limits);
    let pieces = run(input, usize::from(cut % 17) + 1, &limits);
    // The same requests are accepted, with the same contents, and a refusal happens at
    // the same point. Which status a refusal gets may depend on how much had arrived
    // (an over-long line seen before a bare LF further on is 414, not 400).
    assert_eq!(whole.len(), pieces.len(), "split feeding changed the outcome");
    for (a, b) in whole.iter().zip(&pieces) {
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "split feeding changed a request"),
            (Err(_), Err(_)) => {}
            _ => panic!("split feeding changed acceptance: {a:?} vs {b:?}"),
        }
    }
});
