//! Property tests: parsing never panics, and feeding a message in any split parses the
//! same as feeding it whole.

use bytes::BytesMut;
use proptest::prelude::*;

use super::body::BodyDecoder;
use super::request::{BodyFraming, HeadLimits, HeadParser};

/// What a parse produced: the target, the fields and the decoded body.
type Parsed = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

/// Feeds `input` in pieces cut at `cuts`, returning the head (or error status) and the body.
fn run(input: &[u8], cuts: &[usize]) -> Result<Parsed, u16> {
    let limits = HeadLimits::default();
    let mut parser = HeadParser::new();
    let mut buf = BytesMut::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut fed = 0;
    let mut head = None;
    let mut decoder = None;
    let mut body = Vec::new();
    for p in points {
        buf.extend_from_slice(&input[fed..p]);
        fed = p;
        if head.is_none() {
            match parser.parse(&mut buf, &limits) {
                Ok(Some(h)) => {
                    decoder = BodyDecoder::new(h.framing, limits.max_body_bytes);
                    head = Some(h);
                }
                Ok(None) => continue,
                Err(e) => return Err(e.status()),
            }
        }
        if let Some(dec) = decoder.as_mut() {
            let progress = dec
                .decode(&buf, &mut |d| body.extend_from_slice(d))
                .map_err(|e| e.status())?;
            let _ = buf.split_to(progress.consumed);
        }
    }
    let head = head.ok_or(0u16)?;
    if decoder.as_ref().is_some_and(|d| !d.is_done()) {
        return Err(1);
    }
    let fields = head
        .fields()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    Ok((head.target().to_vec(), fields, body))
}

fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (sizes.get(i).copied().unwrap_or(7) % 50 + 1).min(rest.len());
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let _ = run(&input, &cuts);
    }

    #[test]
    fn request_like_bytes_never_panic(
        line in "(GET|POST|get|PUT) (/|\\*|http://a/|/[a-z%0-9?=&]{0,12}) HTTP/(1\\.[01]|2\\.0|1)",
        fields in proptest::collection::vec(("[A-Za-z_ -]{0,8}", "[ -~\t\u{80}-\u{ff}]{0,12}"), 0..6),
        tail in proptest::collection::vec(any::<u8>(), 0..40),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut req = format!("{line}\r\n").into_bytes();
        for (n, v) in &fields {
            req.extend_from_slice(n.as_bytes());
            req.extend_from_slice(b": ");
            req.extend(v.chars().map(|c| c as u32 as u8));
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(&tail);
        let _ = run(&req, &cuts);
    }

    #[test]
    fn split_points_do_not_change_the_result(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        sizes in proptest::collection::vec(any::<usize>(), 0..20),
        use_chunked in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut req = b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nX-A: b\r\n".to_vec();
        if use_chunked {
            req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            req.extend_from_slice(&chunked(&body, &sizes));
        } else {
            req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            req.extend_from_slice(&body);
        }
        let whole = run(&req, &[]).expect("valid request");
        let split = run(&req, &cuts).expect("valid request when split");
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(&whole.2, &body);
    }

    #[test]
    fn head_errors_do_not_depend_on_splits(
        input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), Just(b':'), Just(b'G'), Just(b'/'), Just(b'H'), any::<u8>()], 0..200),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        req.extend_from_slice(&input);
        req.extend_from_slice(b"\r\n\r\n");
        let whole = run(&req, &[]);
        let split = run(&req, &cuts);
        prop_assert_eq!(whole.map(|w| (w.0, w.1)), split.map(|s| (s.0, s.1)));
    }
}

#[test]
fn chunked_framing_helper_is_valid() {
    let body = b"hello world".to_vec();
    let wire = chunked(&body, &[3, 1]);
    let mut dec = BodyDecoder::new(BodyFraming::Chunked, 1 << 20).expect("decoder");
    let mut out = Vec::new();
    let p = dec
        .decode(&wire, &mut |d| out.extend_from_slice(d))
        .expect("decodes");
    assert!(p.done);
    assert_eq!(out, body);
}
