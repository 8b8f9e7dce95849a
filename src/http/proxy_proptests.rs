//! Property tests of the PROXY protocol parser: a valid header (version 1 or 2, any
//! addresses and TLVs) parses to what it says, whatever follows it, and every prefix of
//! it is `Incomplete`, never an error; on any bytes the parser never panics, and a
//! prefix of the input either needs more bytes or gives the whole input's answer.

use std::net::{IpAddr, SocketAddr};

use proptest::collection::vec;
use proptest::prelude::*;

use super::proxy_protocol::encode::{inet_block, ssl, tlv, v1, v2, v2_inet};
use super::proxy_protocol::{parse, Addresses, Command, Parsed, ProxyError, ProxyHeader, Version};

/// Two TCP endpoints of one family.
fn endpoints() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    let v4 = (
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<[u8; 4]>(),
        any::<u16>(),
    );
    let v6 = (
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<[u8; 16]>(),
        any::<u16>(),
    );
    prop_oneof![
        v4.prop_map(|(a, p, b, q)| (
            SocketAddr::new(IpAddr::from(a), p),
            SocketAddr::new(IpAddr::from(b), q)
        )),
        v6.prop_map(|(a, p, b, q)| (
            SocketAddr::new(IpAddr::from(a), p),
            SocketAddr::new(IpAddr::from(b), q)
        )),
    ]
}

/// TLVs after the addresses, and whether they say the client came over TLS.
fn tlvs() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let one = prop_oneof![
        (
            any::<u8>().prop_filter("not SSL or CRC32C", |t| *t != 0x20 && *t != 0x03),
            vec(any::<u8>(), 0..40)
        )
            .prop_map(|(kind, value)| (tlv(kind, &value), false)),
        any::<u8>().prop_map(|client| (ssl(client), client & 1 == 1)),
    ];
    vec(one, 0..4).prop_map(|tlvs| {
        let ssl = tlvs.iter().any(|(_, ssl)| *ssl);
        (tlvs.into_iter().flat_map(|(bytes, _)| bytes).collect(), ssl)
    })
}

fn header(version: Version, command: Command, addresses: Addresses, ssl: bool) -> ProxyHeader {
    ProxyHeader {
        version,
        command,
        addresses,
        ssl,
    }
}

/// A valid header of every kind, with what it must parse to.
fn valid() -> impl Strategy<Value = (Vec<u8>, ProxyHeader)> {
    let v1_inet = endpoints().prop_map(|(source, destination)| {
        let addresses = Addresses::Inet {
            source,
            destination,
        };
        (
            v1(source, destination),
            header(Version::V1, Command::Proxy, addresses, false),
        )
    });
    let v1_unknown = "[ -~]{0,91}".prop_map(|rest| {
        let line = if rest.is_empty() {
            "PROXY UNKNOWN\r\n".to_owned()
        } else {
            format!("PROXY UNKNOWN {rest}\r\n")
        };
        let parsed = header(Version::V1, Command::Proxy, Addresses::Unspecified, false);
        (line.into_bytes(), parsed)
    });
    let v2_proxy = (endpoints(), tlvs(), any::<bool>()).prop_map(|((s, d), (tlvs, ssl), crc)| {
        let addresses = Addresses::Inet {
            source: s,
            destination: d,
        };
        (
            v2_inet(s, d, &tlvs, crc),
            header(Version::V2, Command::Proxy, addresses, ssl),
        )
    });
    let v2_other = (
        prop_oneof![Just(0x00u8), Just(0x31u8)],
        tlvs(),
        any::<bool>(),
    )
        .prop_map(|(family, (tlvs, ssl), crc)| {
            let (block, addresses) = if family == 0x31 {
                (vec![b'/'; 216], Addresses::Unix)
            } else {
                (Vec::new(), Addresses::Unspecified)
            };
            (
                v2(0x21, family, &block, &tlvs, crc),
                header(Version::V2, Command::Proxy, addresses, ssl),
            )
        });
    let v2_local = (any::<u8>(), vec(any::<u8>(), 0..300)).prop_map(|(family, block)| {
        let parsed = header(Version::V2, Command::Local, Addresses::Unspecified, false);
        (v2(0x20, family, &block, &[], false), parsed)
    });
    prop_oneof![v1_inet, v1_unknown, v2_proxy, v2_other, v2_local]
}

/// Arbitrary bytes, some of them behind a signature so the parsers get exercised.
fn arbitrary() -> impl Strategy<Value = Vec<u8>> {
    let tail = || vec(any::<u8>(), 0..300);
    prop_oneof![
        tail(),
        tail().prop_map(|t| [b"PROXY ".to_vec(), t].concat()),
        tail().prop_map(|t| [b"PROXY TCP4 ".to_vec(), t].concat()),
        tail().prop_map(|t| [b"\r\n\r\n\0\r\nQUIT\n".to_vec(), t].concat()),
        (prop_oneof![Just(0x20u8), Just(0x21u8)], tail()).prop_map(|(c, t)| [
            b"\r\n\r\n\0\r\nQUIT\n".to_vec(),
            vec![c],
            t
        ]
        .concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_valid_header_parses_to_what_it_says_whatever_follows(
        (bytes, expected) in valid(),
        after in vec(any::<u8>(), 0..64),
    ) {
        let mut buf = bytes.clone();
        buf.extend_from_slice(&after);
        prop_assert_eq!(
            parse(&buf),
            Ok(Parsed::Complete { header: expected, consumed: bytes.len() })
        );
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_incomplete((bytes, _) in valid()) {
        for end in 0..bytes.len() {
            prop_assert_eq!(parse(&bytes[..end]), Ok(Parsed::Incomplete), "cut at {}", end);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_prefixes_agree(buf in arbitrary()) {
        let whole = parse(&buf);
        if let Ok(Parsed::Complete { header, consumed }) = whole {
            prop_assert!(consumed <= buf.len());
            prop_assert_eq!(parse(&buf[..consumed]), whole);
            if let Addresses::Inet { source, destination } = header.addresses {
                prop_assert_eq!(source.is_ipv4(), destination.is_ipv4());
            }
        }
        for end in 0..buf.len() {
            let part = parse(&buf[..end]);
            prop_assert!(
                part == Ok(Parsed::Incomplete) || part == whole,
                "{:?} at {} but {:?} in all", part, end, whole
            );
        }
    }

    #[test]
    fn a_changed_address_byte_fails_the_checksum(
        (source, destination) in endpoints(),
        (tlvs, _) in tlvs(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..,
    ) {
        let mut buf = v2_inet(source, destination, &tlvs, true);
        let block = inet_block(source, destination).1.len();
        buf[16 + at.index(block)] ^= flip;
        prop_assert_eq!(parse(&buf), Err(ProxyError::BadChecksum));
    }
}
