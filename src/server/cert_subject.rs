//! The subject of an X.509 certificate (DER) as an RFC 4514 string, for the environ
//! (`SSL_CLIENT_S_DN`) and the log. Pure: bytes in, text out, no I/O; it reads only as
//! far as the subject, trusts nothing it reads, and anything it cannot read is `None`.
//! (The certificate was verified by rustls before it gets here; this only names it.)

use std::fmt::Write;

/// `CN=client,O=Example` (RFC 4514: the last RDN of the DER first) for a certificate,
/// or `None` when `der` is not a certificate this can read.
pub fn subject(der: &[u8]) -> Option<String> {
    let (cert, _) = element(der, SEQUENCE)?;
    let (mut tbs, _) = element(cert, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs, VERSION)?.1;
    }
    let after_serial = element(tbs, INTEGER)?.1;
    let after_signature = element(after_serial, SEQUENCE)?.1;
    let after_issuer = element(after_signature, SEQUENCE)?.1;
    let after_validity = element(after_issuer, SEQUENCE)?.1;
    let (name, _) = element(after_validity, SEQUENCE)?;
    distinguished_name(name)
}

const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
/// `[0] EXPLICIT Version`, present in every v2/v3 certificate.
const VERSION: u8 = 0xa0;

/// One DER element with tag `tag` at the start of `input`: (its content, what follows).
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = any_element(input)?;
    (found == tag).then_some((content, rest))
}

/// One DER element of any (single-byte) tag: (tag, content, what follows).
fn any_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags: none in a Name
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((tag, content, after))
}

/// `Name ::= SEQUENCE OF SET OF AttributeTypeAndValue`, written last RDN first.
fn distinguished_name(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (mut set, rest) = element(name, SET)?;
        name = rest;
        let mut rdn = String::new();
        while !set.is_empty() {
            let (pair, rest) = element(set, SEQUENCE)?;
            set = rest;
            if !rdn.is_empty() {
                rdn.push('+');
            }
            attribute(pair, &mut rdn)?;
        }
        rdns.push(rdn);
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// `type=value` of one AttributeTypeAndValue.
fn attribute(pair: &[u8], out: &mut String) -> Option<()> {
    let (oid, value) = element(pair, OID)?;
    let name = short_name(oid);
    match name {
        Some(short) => out.push_str(short),
        None => out.push_str(&dotted(oid)?),
    }
    out.push('=');
    let (tag, content, rest) = any_element(value)?;
    if !rest.is_empty() {
        return None;
    }
    match (name, text(tag, content)) {
        (Some(_), Some(text)) => escape(&text, out),
        // RFC 4514 2.4: an unknown type, or a value that is not a string: `#` and the
        // hex of the value's whole DER encoding.
        _ => {
            out.push('#');
            for b in value {
                let _ = write!(out, "{b:02x}");
            }
        }
    }
    Some(())
}

/// The names RFC 4514 section 3 gives (and emailAddress, which every tool prints).
fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return None,
    })
}

/// An OID in dotted form: `2.5.4.45`.
fn dotted(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 != 0 {
            if i + 1 == oid.len() {
                return None; // a truncated arc
            }
            continue;
        }
        if arcs.is_empty() {
            let first = (value / 40).min(2);
            arcs.push(first);
            arcs.push(value - first * 40);
        } else {
            arcs.push(value);
        }
        value = 0;
    }
    if arcs.is_empty() {
        return None;
    }
    let parts: Vec<String> = arcs.iter().map(u64::to_string).collect();
    Some(parts.join("."))
}

/// A directory string's text: UTF8String, PrintableString, IA5String, TeletexString
/// (read as Latin-1, as most tools do) and BMPString (UTF-16).
fn text(tag: u8, content: &[u8]) -> Option<String> {
    match tag {
        0x0c => String::from_utf8(content.to_vec()).ok(),
        0x13 | 0x16 => content
            .is_ascii()
            .then(|| content.iter().map(|&b| char::from(b)).collect()),
        0x14 => Some(content.iter().map(|&b| char::from(b)).collect()),
        0x1e if content.len() % 2 == 0 => {
            let units = content
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// RFC 4514 2.4: `"+,;<>\` and NUL escaped everywhere, `#` and space at the start, and
/// space at the end; other control characters as `\XX` so a log line stays one line.
fn escape(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    let _ = write!(out, "\\{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element: tag, length, content.
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    /// One AttributeTypeAndValue: (OID, string tag, value).
    type Attribute = (Vec<u8>, u8, Vec<u8>);

    /// A certificate-shaped DER whose subject is `rdns` (each a list of attributes), in
    /// DER order.
    fn cert_with_subject(rdns: &[Vec<Attribute>]) -> Vec<u8> {
        let mut name = Vec::new();
        for rdn in rdns {
            let mut set = Vec::new();
            for (oid, tag, value) in rdn {
                let mut pair = der(OID, oid);
                pair.extend(der(*tag, value));
                set.extend(der(SEQUENCE, &pair));
            }
            name.extend(der(SET, &set));
        }
        let mut tbs = der(VERSION, &der(INTEGER, &[2]));
        tbs.extend(der(INTEGER, &[1, 2, 3]));
        tbs.extend(der(SEQUENCE, &der(OID, &[0x2a, 0x03])));
        tbs.extend(der(SEQUENCE, &[])); // issuer
        tbs.extend(der(SEQUENCE, &[])); // validity
        tbs.extend(der(SEQUENCE, &name));
        tbs.extend(der(SEQUENCE, &[])); // subjectPublicKeyInfo
        let mut cert = der(SEQUENCE, &tbs);
        cert.extend(der(SEQUENCE, &[]));
        cert.extend(der(0x03, &[0]));
        der(SEQUENCE, &cert)
    }

    fn attr(oid: &[u8], value: &str) -> Attribute {
        (oid.to_vec(), 0x0c, value.as_bytes().to_vec())
    }

    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];

    #[test]
    fn rdns_are_written_last_first_with_short_names() {
        let cert = cert_with_subject(&[vec![attr(O, "Example")], vec![attr(CN, "client")]]);
        assert_eq!(subject(&cert).as_deref(), Some("CN=client,O=Example"));
    }

    #[test]
    fn a_multi_valued_rdn_is_joined_with_plus() {
        let cert = cert_with_subject(&[vec![attr(CN, "a"), attr(O, "b")]]);
        assert_eq!(subject(&cert).as_deref(), Some("CN=a+O=b"));
    }

    #[test]
    fn special_characters_are_escaped() {
        let cert = cert_with_subject(&[vec![attr(CN, "#a, b+c;\"<>\\ ")]]);
        assert_eq!(
            subject(&cert).as_deref(),
            Some("CN=\\#a\\, b\\+c\\;\\\"\\<\\>\\\\\\ ")
        );
        let cert = cert_with_subject(&[vec![attr(CN, " x\ny")]]);
        assert_eq!(subject(&cert).as_deref(), Some("CN=\\ x\\0ay"));
    }

    #[test]
    fn unknown_types_are_dotted_with_the_hex_value() {
        // 2.5.4.45 (x500UniqueIdentifier) with a PrintableString "ab".
        let cert = cert_with_subject(&[vec![(vec![0x55, 0x04, 0x2d], 0x13, b"ab".to_vec())]]);
        assert_eq!(subject(&cert).as_deref(), Some("2.5.4.45=#13026162"));
        // A big arc: 1.2.840.113549.1.9.2 (unstructuredName)
        let oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x02];
        let cert = cert_with_subject(&[vec![(oid.to_vec(), 0x16, b"x".to_vec())]]);
        assert_eq!(
            subject(&cert).as_deref(),
            Some("1.2.840.113549.1.9.2=#160178")
        );
    }

    #[test]
    fn string_types_are_decoded() {
        let bmp: Vec<u8> = "é€".encode_utf16().flat_map(u16::to_be_bytes).collect();
        let cert = cert_with_subject(&[
            vec![(CN.to_vec(), 0x1e, bmp)],
            vec![(O.to_vec(), 0x14, vec![0xe9])],
        ]);
        assert_eq!(subject(&cert).as_deref(), Some("O=é,CN=é€"));
    }

    #[test]
    fn an_empty_subject_is_empty() {
        assert_eq!(subject(&cert_with_subject(&[])).as_deref(), Some(""));
    }

    #[test]
    fn garbage_and_truncations_are_none() {
        let cert = cert_with_subject(&[vec![attr(CN, "client")]]);
        for cut in 0..cert.len() {
            assert_eq!(subject(&cert[..cut]), None, "cut at {cut}");
        }
        assert_eq!(subject(b""), None);
        assert_eq!(subject(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
    }

    #[test]
    fn a_real_certificate_is_read() {
        let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Tapster Tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client one");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject(cert.der()).as_deref(),
            Some("CN=client one,O=Tapster Tests")
        );
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        /// Splits an RFC 4514 string at its unescaped `sep`.
        fn split_unescaped(s: &str, sep: char) -> Vec<String> {
            let mut parts = vec![String::new()];
            let mut escaped = false;
            for c in s.chars() {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == sep {
                    parts.push(String::new());
                    continue;
                }
                if let Some(part) = parts.last_mut() {
                    part.push(c);
                }
            }
            parts
        }

        /// Undoes `escape` (`\\c` and `\\XX`).
        fn unescape(s: &str) -> String {
            let mut out = Vec::new();
            let bytes = s.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'\\' {
                    let hex = s
                        .get(i + 1..i + 3)
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(b)
                            if bytes[i + 1].is_ascii_hexdigit()
                                && bytes[i + 2].is_ascii_hexdigit() =>
                        {
                            out.push(b);
                            i += 3;
                        }
                        _ => {
                            out.push(bytes[i + 1]);
                            i += 2;
                        }
                    }
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        }

        proptest! {
            #[test]
            fn any_bytes_are_read_or_refused_without_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
                let _ = subject(&data);
            }

            #[test]
            fn every_value_comes_back_after_unescaping(
                values in proptest::collection::vec("[ -~é€\n]{0,12}", 1..5)
            ) {
                let rdns: Vec<_> = values
                    .iter()
                    .map(|v| vec![(vec![0x55, 0x04, 0x03], 0x0c, v.as_bytes().to_vec())])
                    .collect();
                let name = subject(&cert_with_subject(&rdns)).unwrap();
                let parts = split_unescaped(&name, ',');
                prop_assert_eq!(parts.len(), values.len());
                for (part, value) in parts.iter().zip(values.iter().rev()) {
                    let v = part.strip_prefix("CN=").unwrap();
                    prop_assert_eq!(&unescape(v), value);
                }
            }
        }
    }
}
