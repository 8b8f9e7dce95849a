//! The PROXY protocol (HAProxy's `proxy-protocol.txt`), versions 1 and 2, sans-IO:
//! the first bytes of a connection in, the header a load balancer put there (who the
//! client is, whether it came over TLS) or the reason it is refused out.
//!
//! It owns the wire format and its limits. Version 1 is one text line of at most 107
//! bytes, CRLF included: `PROXY`, then `TCP4` or `TCP6` with two addresses of that
//! family and two ports in plain decimal (no leading zeros), single spaces, or
//! `UNKNOWN` and anything up to the CRLF. Version 2 is the 12-byte signature, version
//! 2, command LOCAL or PROXY, family UNSPEC, INET, INET6 or UNIX over STREAM (DGRAM is
//! refused), an address block as long as the family needs, then TLVs, each walked to
//! its exact length: `PP2_TYPE_SSL` (and its sub-TLVs) is read, a `PP2_TYPE_CRC32C` is
//! verified, the others are skipped. A LOCAL header's block is ignored, as the
//! specification says (its addresses, family and TLVs alike). A version 2 header is at
//! most `V2_MAX_LEN` bytes in all.
//!
//! `parse` answers `Incomplete` only while the bytes so far can still begin a valid
//! header: bytes that match neither signature, or a fixed part that is already wrong
//! (version, command, family, length), are an error at once.
//!
//! It must not touch a socket, a clock or Python, decide who may send a header (the
//! server checks the peer against `trusted_proxy` before reading one), or consume a
//! byte after the header: those belong to the first request.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 line, CRLF included (the specification's worst case,
/// `PROXY UNKNOWN` with two full IPv6 addresses and ports).
pub const V1_MAX_LEN: usize = 107;

/// The longest version 2 header accepted, its 16 fixed bytes included. The format
/// allows 16 + 65535; real senders stay far below (addresses, an SSL TLV with a
/// certificate's names, a cloud's endpoint id), so a longer one is refused rather than
/// buffered.
pub const V2_MAX_LEN: usize = 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family and transport, length.
const V2_FIXED: usize = 16;

const PP2_TYPE_CRC32C: u8 = 0x03;
const PP2_TYPE_SSL: u8 = 0x20;
/// In the SSL TLV's `client` field: the client connected over SSL/TLS.
const PP2_CLIENT_SSL: u8 = 0x01;
/// An SSL TLV's fixed part: `client` (1 byte) and `verify` (4 bytes).
const SSL_FIXED: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The sender's own connection (a health check): serve it as a plain connection,
    /// with its real peer.
    Local,
    /// A relayed connection: `addresses` say whose.
    Proxy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// TCP over IPv4 or IPv6 (both of the same family): the client, and the address it
    /// connected to.
    Inet {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// A client on a Unix socket of the sender (the paths are not kept).
    Unix,
    /// Version 1 `UNKNOWN`, version 2 UNSPEC, or a LOCAL header (whose block is
    /// ignored).
    Unspecified,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    pub command: Command,
    pub addresses: Addresses,
    /// The client connected to the sender over TLS (version 2's SSL TLV with the
    /// `PP2_CLIENT_SSL` bit).
    pub ssl: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A valid beginning so far: more bytes are needed.
    Incomplete,
    /// A whole header, the first `consumed` bytes of the buffer; what follows it is
    /// not part of it.
    Complete {
        header: ProxyHeader,
        consumed: usize,
    },
}

/// Why the first bytes of a connection are not an acceptable PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// They match neither the version 1 nor the version 2 signature.
    NoSignature,
    /// A version 1 line without its CRLF in `V1_MAX_LEN` bytes, or a version 2 header
    /// longer than `V2_MAX_LEN`.
    TooLong,
    /// Version 1: the line ends in a bare LF.
    BadLineEnd,
    /// Version 1: a protocol other than `TCP4`, `TCP6` and `UNKNOWN`.
    BadProtocol,
    /// Version 1: not exactly two addresses and two ports after the protocol, each
    /// after exactly one space.
    BadFields,
    /// Version 1: an address that is no address at all.
    BadAddress,
    /// Version 1: an address of the other family than the one named.
    FamilyMismatch,
    /// Version 1: a port that is not a decimal number in 0..=65535 without leading
    /// zeros.
    BadPort,
    /// Version 2: a version other than 2.
    BadVersion,
    /// Version 2: a command other than LOCAL and PROXY.
    BadCommand,
    /// Version 2: a DGRAM transport (only stream connections are served).
    Datagram,
    /// Version 2: a family and transport byte the specification does not define.
    BadFamily,
    /// Version 2: a length shorter than the family's address block.
    ShortAddresses,
    /// Version 2: a TLV that runs past the end of the header.
    BadTlv,
    /// Version 2: an SSL TLV shorter than its fixed part, or whose sub-TLVs overrun it.
    BadSslTlv,
    /// Version 2: a CRC32C TLV that is not 4 bytes long or does not match the header.
    BadChecksum,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyError::NoSignature => "not a PROXY protocol header",
            ProxyError::TooLong => "the PROXY header is too long",
            ProxyError::BadLineEnd => "the PROXY v1 line does not end in CRLF",
            ProxyError::BadProtocol => "the PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ProxyError::BadFields => "the PROXY v1 line does not have two addresses and two ports",
            ProxyError::BadAddress => "a PROXY v1 address is not an IP address",
            ProxyError::FamilyMismatch => "a PROXY v1 address is not of the family named",
            ProxyError::BadPort => "a PROXY v1 port is not a decimal number in 0..65535",
            ProxyError::BadVersion => "the PROXY v2 version is not 2",
            ProxyError::BadCommand => "the PROXY v2 command is neither LOCAL nor PROXY",
            ProxyError::Datagram => "the PROXY v2 header is for a datagram connection",
            ProxyError::BadFamily => "the PROXY v2 address family or transport is invalid",
            ProxyError::ShortAddresses => "the PROXY v2 length is too short for its addresses",
            ProxyError::BadTlv => "a PROXY v2 TLV runs past the end of the header",
            ProxyError::BadSslTlv => "the PROXY v2 SSL TLV is malformed",
            ProxyError::BadChecksum => "the PROXY v2 CRC32C checksum does not match",
        })
    }
}

impl std::error::Error for ProxyError {}

/// Parses the PROXY header at the start of `buf` (the first bytes of a connection).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.starts_with(V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(V1_PREFIX) {
        parse_v1(buf)
    } else if V2_SIGNATURE.starts_with(buf) || V1_PREFIX.starts_with(buf) {
        Ok(Parsed::Incomplete)
    } else {
        Err(ProxyError::NoSignature)
    }
}

// --- version 1 ------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum IpFamily {
    V4,
    V6,
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(ProxyError::BadLineEnd)?;
    let rest = line.strip_prefix(V1_PREFIX).ok_or(ProxyError::BadLineEnd)?;
    let header = ProxyHeader {
        version: Version::V1,
        command: Command::Proxy,
        addresses: v1_addresses(rest)?,
        ssl: false,
    };
    Ok(Parsed::Complete {
        header,
        consumed: lf + 1,
    })
}

/// The line after `PROXY `, without its CRLF.
fn v1_addresses(rest: &[u8]) -> Result<Addresses, ProxyError> {
    let mut fields = rest.split(|&b| b == b' ');
    let family = match fields.next() {
        // The receiver must ignore whatever follows UNKNOWN.
        Some(b"UNKNOWN") => return Ok(Addresses::Unspecified),
        Some(b"TCP4") => IpFamily::V4,
        Some(b"TCP6") => IpFamily::V6,
        _ => return Err(ProxyError::BadProtocol),
    };
    let (Some(src), Some(dst), Some(src_port), Some(dst_port), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::BadFields);
    };
    let source = SocketAddr::new(v1_address(src, family)?, v1_port(src_port)?);
    let destination = SocketAddr::new(v1_address(dst, family)?, v1_port(dst_port)?);
    Ok(Addresses::Inet {
        source,
        destination,
    })
}

/// An address of `family`: dotted decimal without leading zeros, or IPv6 text (the
/// RFC 4291 forms, including a trailing dotted IPv4 part, which is what `inet_ntop`
/// writes for an IPv4-mapped address; no zone).
fn v1_address(text: &[u8], family: IpFamily) -> Result<IpAddr, ProxyError> {
    let text = std::str::from_utf8(text).map_err(|_| ProxyError::BadAddress)?;
    let v4 = text.parse::<Ipv4Addr>().ok();
    let v6 = text.parse::<Ipv6Addr>().ok();
    match (family, v4, v6) {
        (IpFamily::V4, Some(ip), _) => Ok(IpAddr::V4(ip)),
        (IpFamily::V6, _, Some(ip)) => Ok(IpAddr::V6(ip)),
        (IpFamily::V4, None, Some(_)) | (IpFamily::V6, Some(_), None) => {
            Err(ProxyError::FamilyMismatch)
        }
        _ => Err(ProxyError::BadAddress),
    }
}

/// A port: decimal digits, no sign, no leading zero (but `0` itself), at most 65535.
fn v1_port(text: &[u8]) -> Result<u16, ProxyError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.iter().all(u8::is_ascii_digit);
    if !digits || (text.len() > 1 && text[0] == b'0') {
        return Err(ProxyError::BadPort);
    }
    let value = text.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| ProxyError::BadPort)
}

// --- version 2 ------------------------------------------------------------------------

/// A PROXY command's family (over STREAM): how long its address block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Unspec,
    Inet,
    Inet6,
    Unix,
}

impl Family {
    fn from_byte(byte: u8) -> Result<Family, ProxyError> {
        match byte {
            0x00 => Ok(Family::Unspec),
            0x11 => Ok(Family::Inet),
            0x21 => Ok(Family::Inet6),
            0x31 => Ok(Family::Unix),
            0x12 | 0x22 | 0x32 => Err(ProxyError::Datagram),
            _ => Err(ProxyError::BadFamily),
        }
    }

    fn block_len(self) -> usize {
        match self {
            Family::Unspec => 0,
            Family::Inet => 12,
            Family::Inet6 => 36,
            Family::Unix => 216,
        }
    }
}

/// What the 16 fixed bytes say.
#[derive(Clone, Copy)]
enum Kind {
    /// The block (whatever its family) is ignored.
    Local,
    Proxy(Family),
}

/// The fixed part, checked as far as it has arrived: `None` until all 16 bytes are
/// there (and each byte that is there is valid); the header's total length then.
fn v2_fixed(buf: &[u8]) -> Result<Option<(Kind, usize)>, ProxyError> {
    let Some(&version_command) = buf.get(12) else {
        return Ok(None);
    };
    if version_command >> 4 != 2 {
        return Err(ProxyError::BadVersion);
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::BadCommand),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(None);
    };
    let kind = if local {
        Kind::Local
    } else {
        Kind::Proxy(Family::from_byte(family)?)
    };
    let Some(&[hi, lo]) = buf.get(14..V2_FIXED) else {
        return Ok(None);
    };
    let total = V2_FIXED + usize::from(u16::from_be_bytes([hi, lo]));
    if total > V2_MAX_LEN {
        return Err(ProxyError::TooLong);
    }
    if let Kind::Proxy(family) = kind {
        if total < V2_FIXED + family.block_len() {
            return Err(ProxyError::ShortAddresses);
        }
    }
    Ok(Some((kind, total)))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some((kind, total)) = v2_fixed(buf)? else {
        return Ok(Parsed::Incomplete);
    };
    let Some(whole) = buf.get(..total) else {
        return Ok(Parsed::Incomplete);
    };
    let header = match kind {
        Kind::Local => ProxyHeader {
            version: Version::V2,
            command: Command::Local,
            addresses: Addresses::Unspecified,
            ssl: false,
        },
        Kind::Proxy(family) => v2_proxy(whole, family)?,
    };
    Ok(Parsed::Complete {
        header,
        consumed: total,
    })
}

/// A whole PROXY header (`whole`: fixed part, block and TLVs).
fn v2_proxy(whole: &[u8], family: Family) -> Result<ProxyHeader, ProxyError> {
    let block = whole.get(V2_FIXED..).unwrap_or_default();
    let addresses = match family {
        Family::Unspec => Addresses::Unspecified,
        Family::Unix => Addresses::Unix,
        Family::Inet => inet4(block)?,
        Family::Inet6 => inet6(block)?,
    };
    let ssl = v2_tlvs(whole, V2_FIXED + family.block_len())?;
    Ok(ProxyHeader {
        version: Version::V2,
        command: Command::Proxy,
        addresses,
        ssl,
    })
}

fn inet4(block: &[u8]) -> Result<Addresses, ProxyError> {
    let b: &[u8; 12] = block.first_chunk().ok_or(ProxyError::ShortAddresses)?;
    let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]));
    let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    Ok(Addresses::Inet {
        source: SocketAddr::new(ip(0), port(8)),
        destination: SocketAddr::new(ip(4), port(10)),
    })
}

fn inet6(block: &[u8]) -> Result<Addresses, ProxyError> {
    let b: &[u8; 36] = block.first_chunk().ok_or(ProxyError::ShortAddresses)?;
    let ip = |i: usize| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&b[i..i + 16]);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    Ok(Addresses::Inet {
        source: SocketAddr::new(ip(0), port(32)),
        destination: SocketAddr::new(ip(16), port(34)),
    })
}

/// One TLV of `bytes`, at `at`.
struct Tlv<'a> {
    kind: u8,
    /// Where the value starts in `bytes`.
    value_at: usize,
    value: &'a [u8],
}

impl Tlv<'_> {
    fn end(&self) -> usize {
        self.value_at + self.value.len()
    }
}

/// Calls `visit` on each TLV of `bytes[start..]`, which they must fill exactly; a TLV
/// that overruns (or a remnant shorter than a TLV's 3-byte head) is `overrun`.
fn walk_tlvs<'a>(
    bytes: &'a [u8],
    start: usize,
    overrun: ProxyError,
    mut visit: impl FnMut(&Tlv<'a>) -> Result<(), ProxyError>,
) -> Result<(), ProxyError> {
    let mut at = start;
    while at < bytes.len() {
        let Some(&[kind, hi, lo]) = bytes.get(at..at + 3) else {
            return Err(overrun);
        };
        let value_at = at + 3;
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let value = bytes.get(value_at..value_at + len).ok_or(overrun)?;
        let tlv = Tlv {
            kind,
            value_at,
            value,
        };
        visit(&tlv)?;
        at = tlv.end();
    }
    Ok(())
}

/// Walks the TLVs after the address block (`whole[start..]`), verifying a CRC32C one;
/// returns whether an SSL TLV says the client came over TLS.
fn v2_tlvs(whole: &[u8], start: usize) -> Result<bool, ProxyError> {
    let mut ssl = false;
    walk_tlvs(whole, start, ProxyError::BadTlv, |tlv| {
        match tlv.kind {
            PP2_TYPE_SSL => ssl |= ssl_tlv(tlv.value)?,
            PP2_TYPE_CRC32C => verify_checksum(whole, tlv)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(ssl)
}

/// `client` (1 byte), `verify` (4 bytes), then sub-TLVs that must fill the value.
fn ssl_tlv(value: &[u8]) -> Result<bool, ProxyError> {
    let Some(&client) = value.first() else {
        return Err(ProxyError::BadSslTlv);
    };
    if value.len() < SSL_FIXED {
        return Err(ProxyError::BadSslTlv);
    }
    walk_tlvs(value, SSL_FIXED, ProxyError::BadSslTlv, |_| Ok(()))?;
    Ok(client & PP2_CLIENT_SSL != 0)
}

/// The CRC32C of the whole header with the checksum's 4 bytes as zeros must be the
/// checksum (big-endian, like every number of the header).
fn verify_checksum(whole: &[u8], tlv: &Tlv<'_>) -> Result<(), ProxyError> {
    let Ok(expected) = <[u8; 4]>::try_from(tlv.value) else {
        return Err(ProxyError::BadChecksum);
    };
    let before = whole.get(..tlv.value_at).unwrap_or_default();
    let after = whole.get(tlv.end()..).unwrap_or_default();
    let crc = crc32c(&[before, &[0; 4], after]);
    if crc == u32::from_be_bytes(expected) {
        Ok(())
    } else {
        Err(ProxyError::BadChecksum)
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, as RFC 4960 appendix B).
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The CRC-32C of the pieces, one after the other.
fn crc32c(pieces: &[&[u8]]) -> u32 {
    let mut crc = u32::MAX;
    for piece in pieces {
        for &byte in *piece {
            crc = CRC32C_TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8);
        }
    }
    !crc
}

#[cfg(test)]
pub(crate) mod encode {
    //! Headers built for the tests (unit and property): version 1 lines and version 2
    //! headers with any TLVs, a CRC32C filled in on request.

    use super::*;

    /// A version 1 line for a TCP connection.
    pub fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
        format!(
            "PROXY {family} {} {} {} {}\r\n",
            source.ip(),
            destination.ip(),
            source.port(),
            destination.port()
        )
        .into_bytes()
    }

    /// One TLV.
    pub fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let len = u16::try_from(value.len()).expect("a short TLV");
        let mut out = vec![kind];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    /// An SSL TLV: `client` bits, `verify`, and a version sub-TLV.
    pub fn ssl(client: u8) -> Vec<u8> {
        let mut value = vec![client, 0, 0, 0, 0];
        value.extend(tlv(0x21, b"TLSv1.3"));
        tlv(PP2_TYPE_SSL, &value)
    }

    /// A version 2 header: `command_byte` (0x20 LOCAL, 0x21 PROXY), `family_byte`,
    /// the address `block` and the TLVs; with `crc`, a CRC32C TLV after them.
    pub fn v2(command_byte: u8, family_byte: u8, block: &[u8], tlvs: &[u8], crc: bool) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(command_byte);
        out.push(family_byte);
        let len = block.len() + tlvs.len() + if crc { 7 } else { 0 };
        out.extend_from_slice(&u16::try_from(len).expect("a short header").to_be_bytes());
        out.extend_from_slice(block);
        out.extend_from_slice(tlvs);
        if crc {
            out.extend(tlv(PP2_TYPE_CRC32C, &[0; 4]));
            let sum = crc32c(&[&out]);
            let at = out.len() - 4;
            out[at..].copy_from_slice(&sum.to_be_bytes());
        }
        out
    }

    /// The address block of a TCP connection (INET or INET6 by the addresses).
    pub fn inet_block(source: SocketAddr, destination: SocketAddr) -> (u8, Vec<u8>) {
        let mut block = Vec::new();
        let family = match (source.ip(), destination.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                0x11
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                0x21
            }
            _ => panic!("addresses of one family"),
        };
        block.extend_from_slice(&source.port().to_be_bytes());
        block.extend_from_slice(&destination.port().to_be_bytes());
        (family, block)
    }

    /// A version 2 PROXY header for a TCP connection.
    pub fn v2_inet(source: SocketAddr, destination: SocketAddr, tlvs: &[u8], crc: bool) -> Vec<u8> {
        let (family, block) = inet_block(source, destination);
        v2(0x21, family, &block, tlvs, crc)
    }
}

#[cfg(test)]
mod tests {
    use super::encode::*;
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a socket address")
    }

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, consumed }) => (header, consumed),
            other => panic!("not complete: {other:?} for {buf:?}"),
        }
    }

    fn inet(source: &str, destination: &str) -> Addresses {
        Addresses::Inet {
            source: addr(source),
            destination: addr(destination),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        let (header, consumed) = complete(line);
        assert_eq!(consumed, line.len() - 5);
        assert_eq!(header.version, Version::V1);
        assert_eq!(header.command, Command::Proxy);
        assert_eq!(
            header.addresses,
            inet("192.0.2.1:56324", "198.51.100.2:443")
        );
        assert!(!header.ssl);
        let (header, _) = complete(b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n");
        assert_eq!(header.addresses, inet("[2001:db8::1]:0", "[::1]:65535"));
        let (header, _) = complete(b"PROXY TCP6 ::ffff:192.0.2.1 ::FFFF:c000:202 1 2\r\n");
        assert_eq!(
            header.addresses,
            inet("[::ffff:192.0.2.1]:1", "[::ffff:192.0.2.2]:2")
        );
        for unknown in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff::1 whatever here 1 2\r\n",
        ] {
            let (header, consumed) = complete(unknown);
            assert_eq!(
                (header.addresses, consumed),
                (Addresses::Unspecified, unknown.len())
            );
        }
    }

    #[test]
    fn v1_the_longest_line_is_accepted_and_one_more_byte_refused() {
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(line.len(), 104);
        complete(line.as_bytes());
        let longest = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(longest.len(), V1_MAX_LEN);
        complete(longest.as_bytes());
        let too_long = format!("PROXY UNKNOWN {full} {full} 65535 655350\r\n");
        assert_eq!(parse(too_long.as_bytes()), Err(ProxyError::TooLong));
        // Without its end, it is refused as soon as 107 bytes have come.
        let mut no_end = V1_PREFIX.to_vec();
        no_end.resize(V1_MAX_LEN, b'U');
        assert_eq!(parse(&no_end[..106]), Ok(Parsed::Incomplete));
        assert_eq!(parse(&no_end), Err(ProxyError::TooLong));
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        let cases: &[(&[u8], ProxyError)] = &[
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", ProxyError::BadLineEnd),
            (b"PROXY \r\n", ProxyError::BadProtocol),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::BadProtocol,
            ),
            (
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::BadProtocol,
            ),
            (b"PROXY UNKNOWNX\r\n", ProxyError::BadProtocol),
            (
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::BadProtocol,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", ProxyError::BadFields),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
                ProxyError::BadFields,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
                ProxyError::BadFields,
            ),
            (
                b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
                ProxyError::BadFields,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n",
                ProxyError::BadFields,
            ),
            (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", ProxyError::BadAddress),
            (
                b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
                ProxyError::BadAddress,
            ),
            (
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::BadAddress,
            ),
            (
                b"PROXY TCP4 example.com 5.6.7.8 1 2\r\n",
                ProxyError::BadAddress,
            ),
            (
                b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
                ProxyError::FamilyMismatch,
            ),
            (
                b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n",
                ProxyError::FamilyMismatch,
            ),
            (
                b"PROXY TCP6 ::ffff:1.2.3 ::1 1 2\r\n",
                ProxyError::BadAddress,
            ),
            (b"PROXY TCP6 [::1] ::1 1 2\r\n", ProxyError::BadAddress),
            (b"PROXY TCP6 ::1%eth0 ::1 1 2\r\n", ProxyError::BadAddress),
            (b"PROXY TCP6 ::1::2 ::1 1 2\r\n", ProxyError::BadAddress),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                ProxyError::BadPort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 099999\r\n",
                ProxyError::BadPort,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", ProxyError::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", ProxyError::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", ProxyError::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 8a 2\r\n", ProxyError::BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", ProxyError::BadPort),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 \xff 2\r\n",
                ProxyError::BadPort,
            ),
        ];
        for (line, error) in cases {
            assert_eq!(
                parse(line),
                Err(*error),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn anything_else_is_refused_at_its_first_wrong_byte() {
        assert_eq!(parse(b""), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PROX"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUI"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"G"), Err(ProxyError::NoSignature));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NoSignature));
        assert_eq!(parse(b"PROXX"), Err(ProxyError::NoSignature));
        assert_eq!(parse(b"PROXYTCP4"), Err(ProxyError::NoSignature));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIT\r"), Err(ProxyError::NoSignature));
        assert_eq!(parse(b"\r\n\r\n\r\n"), Err(ProxyError::NoSignature));
    }

    #[test]
    fn v2_inet_and_inet6() {
        let request = b"GET / HTTP/1.1\r\n\r\n";
        let mut buf = v2_inet(
            addr("192.0.2.1:56324"),
            addr("198.51.100.2:443"),
            &[],
            false,
        );
        let len = buf.len();
        assert_eq!(len, 28);
        buf.extend_from_slice(request);
        let (header, consumed) = complete(&buf);
        assert_eq!(consumed, len);
        assert_eq!(header.version, Version::V2);
        assert_eq!(header.command, Command::Proxy);
        assert_eq!(
            header.addresses,
            inet("192.0.2.1:56324", "198.51.100.2:443")
        );
        let buf = v2_inet(addr("[2001:db8::7]:1"), addr("[::1]:8080"), &[], false);
        assert_eq!(buf.len(), 52);
        let (header, _) = complete(&buf);
        assert_eq!(header.addresses, inet("[2001:db8::7]:1", "[::1]:8080"));
    }

    #[test]
    fn v2_unspec_unix_and_local() {
        let (header, consumed) = complete(&v2(0x21, 0x00, &[], &[], false));
        assert_eq!(
            (header.command, header.addresses, consumed),
            (Command::Proxy, Addresses::Unspecified, 16)
        );
        let (header, _) = complete(&v2(0x21, 0x31, &[b'/'; 216], &[], false));
        assert_eq!(header.addresses, Addresses::Unix);
        // LOCAL: the block is ignored, whatever its family and contents.
        for (family, block) in [
            (0x00, &[][..]),
            (0x11, &[9; 12][..]),
            (0x12, &[1, 2][..]),
            (0xff, &[0; 3][..]),
        ] {
            let buf = v2(0x20, family, block, &[], false);
            let (header, consumed) = complete(&buf);
            assert_eq!(consumed, buf.len());
            assert_eq!(
                (header.command, header.addresses, header.ssl),
                (Command::Local, Addresses::Unspecified, false)
            );
        }
    }

    #[test]
    fn v2_ssl_tlv_sets_ssl_only_with_the_client_ssl_bit() {
        let src = addr("192.0.2.1:5000");
        let dst = addr("192.0.2.2:443");
        let mut tlvs = tlv(0x01, b"h2");
        tlvs.extend(ssl(0x01 | 0x02));
        tlvs.extend(tlv(0x04, &[0; 9]));
        assert!(complete(&v2_inet(src, dst, &tlvs, false)).0.ssl);
        assert!(!complete(&v2_inet(src, dst, &ssl(0x02), false)).0.ssl);
        assert!(
            !complete(&v2_inet(src, dst, &tlv(0x02, b"example.com"), false))
                .0
                .ssl
        );
        // The bare fixed part, no sub-TLVs.
        let bare = tlv(PP2_TYPE_SSL, &[1, 0, 0, 0, 0]);
        assert!(complete(&v2_inet(src, dst, &bare, false)).0.ssl);
        // With UNSPEC addresses too.
        assert!(complete(&v2(0x21, 0x00, &[], &ssl(1), false)).0.ssl);
    }

    #[test]
    fn v2_crc32c_is_verified() {
        assert_eq!(crc32c(&[b"123456789"]), 0xE306_9283);
        assert_eq!(crc32c(&[b"1234", b"", b"56789"]), 0xE306_9283);
        let src = addr("192.0.2.1:5000");
        let dst = addr("192.0.2.2:443");
        let good = v2_inet(src, dst, &ssl(1), true);
        assert!(complete(&good).0.ssl);
        for at in 16..28 {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            assert_eq!(parse(&bad), Err(ProxyError::BadChecksum), "byte {at}");
        }
        let mut wrong_sum = good.clone();
        let last = wrong_sum.len() - 1;
        wrong_sum[last] ^= 1;
        assert_eq!(parse(&wrong_sum), Err(ProxyError::BadChecksum));
        let short_sum = v2_inet(src, dst, &tlv(PP2_TYPE_CRC32C, &[0; 3]), false);
        assert_eq!(parse(&short_sum), Err(ProxyError::BadChecksum));
    }

    #[test]
    fn v2_malformed_fixed_parts_are_refused_as_soon_as_they_arrive() {
        let good = v2_inet(addr("192.0.2.1:5000"), addr("192.0.2.2:443"), &[], false);
        let with = |at: usize, byte: u8| {
            let mut buf = good[..=at].to_vec();
            buf[at] = byte;
            parse(&buf)
        };
        assert_eq!(with(12, 0x11), Err(ProxyError::BadVersion));
        assert_eq!(with(12, 0x31), Err(ProxyError::BadVersion));
        assert_eq!(with(12, 0x22), Err(ProxyError::BadCommand));
        assert_eq!(with(12, 0x2f), Err(ProxyError::BadCommand));
        for dgram in [0x12, 0x22, 0x32] {
            assert_eq!(with(13, dgram), Err(ProxyError::Datagram));
        }
        for bad in [0x01, 0x02, 0x10, 0x13, 0x20, 0x30, 0x41, 0xff] {
            assert_eq!(with(13, bad), Err(ProxyError::BadFamily), "{bad:#x}");
        }
        // INET needs 12 bytes of addresses, INET6 36, UNIX 216.
        assert_eq!(with(15, 11), Err(ProxyError::ShortAddresses));
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 12], &[], false)),
            Err(ProxyError::ShortAddresses)
        );
        assert_eq!(
            parse(&v2(0x21, 0x31, &[0; 215], &[], false)),
            Err(ProxyError::ShortAddresses)
        );
        // Longer than the cap: refused from the length alone.
        let mut long = good[..14].to_vec();
        long.extend_from_slice(&(V2_MAX_LEN as u16 - 15).to_be_bytes());
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
        let mut longest = good[..14].to_vec();
        longest.extend_from_slice(&(V2_MAX_LEN as u16 - 16).to_be_bytes());
        assert_eq!(parse(&longest), Ok(Parsed::Incomplete));
        longest.resize(V2_MAX_LEN, 0);
        longest[28..31].copy_from_slice(&[0x04, 0x0f, 0xe1]);
        assert_eq!(complete(&longest).1, V2_MAX_LEN);
    }

    #[test]
    fn v2_tlvs_must_fill_the_header_exactly() {
        let src = addr("192.0.2.1:5000");
        let dst = addr("192.0.2.2:443");
        let overruns = [
            tlv(0x04, &[0; 4])[..6].to_vec(),
            vec![0x04],
            vec![0x04, 0x00],
            vec![0x04, 0x00, 0x01],
        ];
        for tlvs in overruns {
            assert_eq!(
                parse(&v2_inet(src, dst, &tlvs, false)),
                Err(ProxyError::BadTlv),
                "{tlvs:?}"
            );
        }
        let mut sub_overrun = vec![1, 0, 0, 0, 0];
        sub_overrun.extend_from_slice(&[0x21, 0x00, 0x09, b'T']);
        let bad_ssl = [
            tlv(PP2_TYPE_SSL, &[1, 0, 0, 0]),
            tlv(PP2_TYPE_SSL, &[]),
            tlv(PP2_TYPE_SSL, &sub_overrun),
        ];
        for tlvs in bad_ssl {
            assert_eq!(
                parse(&v2_inet(src, dst, &tlvs, false)),
                Err(ProxyError::BadSslTlv),
                "{tlvs:?}"
            );
        }
    }

    #[test]
    fn v2_waits_for_the_whole_header() {
        let buf = v2_inet(addr("[2001:db8::7]:1"), addr("[::1]:8080"), &ssl(1), true);
        for end in 0..buf.len() {
            assert_eq!(parse(&buf[..end]), Ok(Parsed::Incomplete), "{end}");
        }
        assert_eq!(complete(&buf).1, buf.len());
    }

    #[test]
    fn the_errors_read_as_reasons() {
        assert_eq!(
            ProxyError::NoSignature.to_string(),
            "not a PROXY protocol header"
        );
        assert_eq!(
            ProxyError::Datagram.to_string(),
            "the PROXY v2 header is for a datagram connection"
        );
    }
}
