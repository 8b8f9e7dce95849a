//! Trusted proxy headers (X-Forwarded-For/Host/Proto/Port/By and RFC 7239 Forwarded),
//! with Waitress's rules: which peers are trusted, how many hops of each header to
//! believe, how the results rewrite REMOTE_ADDR, SERVER_NAME, SERVER_PORT, HTTP_HOST and
//! wsgi.url_scheme, and which headers are removed from the environ.
//!
//! Pure logic on strings (header values as the environ would hold them, latin-1 text):
//! no Python here, so every rule is unit-tested. Tapster also accepts several addresses
//! and CIDR ranges as trusted proxies (Waitress accepts one address or `*`).

use std::net::IpAddr;

use crate::http::RequestHead;

/// The forwarding headers, as bits.
pub const X_FORWARDED_FOR: u8 = 1;
pub const X_FORWARDED_HOST: u8 = 2;
pub const X_FORWARDED_PROTO: u8 = 4;
pub const X_FORWARDED_PORT: u8 = 8;
pub const X_FORWARDED_BY: u8 = 16;
pub const FORWARDED: u8 = 32;
pub const ALL_HEADERS: u8 = 63;

/// (bit, environ key without `HTTP_`, display name) for every forwarding header.
pub const HEADERS: [(u8, &str, &str); 6] = [
    (X_FORWARDED_FOR, "X_FORWARDED_FOR", "X-Forwarded-For"),
    (X_FORWARDED_HOST, "X_FORWARDED_HOST", "X-Forwarded-Host"),
    (X_FORWARDED_PROTO, "X_FORWARDED_PROTO", "X-Forwarded-Proto"),
    (X_FORWARDED_PORT, "X_FORWARDED_PORT", "X-Forwarded-Port"),
    (X_FORWARDED_BY, "X_FORWARDED_BY", "X-Forwarded-By"),
    (FORWARDED, "FORWARDED", "Forwarded"),
];

/// The bit of a forwarding header given its field name (any case) or its environ key
/// (without `HTTP_`): case is ignored and `-` matches `_`.
pub fn header_bit(name: &[u8]) -> Option<u8> {
    HEADERS.iter().find_map(|(bit, key, _)| {
        let matches = name.len() == key.len()
            && name.iter().zip(key.bytes()).all(|(&n, k)| {
                let n = if n == b'-' {
                    b'_'
                } else {
                    n.to_ascii_uppercase()
                };
                n == k
            });
        matches.then_some(*bit)
    })
}

/// Who may send forwarding headers.
#[derive(Clone, Debug, Default)]
pub enum TrustedPeers {
    /// Nobody (no `trusted_proxy`).
    #[default]
    Nobody,
    /// `*`: every peer.
    Everyone,
    /// These addresses, ranges, and (for Unix sockets) `localhost`.
    Listed {
        networks: Vec<(IpAddr, u8)>,
        localhost: bool,
    },
}

impl TrustedPeers {
    /// Parses `trusted_proxy`: `*`, or addresses and CIDR ranges separated by spaces
    /// or commas, or `localhost`.
    pub fn parse(text: Option<&str>) -> Result<TrustedPeers, String> {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(TrustedPeers::Nobody);
        };
        if text == "*" {
            return Ok(TrustedPeers::Everyone);
        }
        let mut networks = Vec::new();
        let mut localhost = false;
        for entry in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
        {
            if entry == "localhost" {
                localhost = true;
                continue;
            }
            let (addr, prefix) = match entry.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (entry, None),
            };
            let ip: IpAddr = addr
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| {
                    format!("trusted_proxy entry {entry:?} is not an IP address or CIDR range")
                })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| {
                    format!("trusted_proxy entry {entry:?} has an invalid prefix length")
                })?,
                None => max,
            };
            networks.push((ip, prefix));
        }
        Ok(TrustedPeers::Listed {
            networks,
            localhost,
        })
    }

    pub fn is_nobody(&self) -> bool {
        matches!(self, TrustedPeers::Nobody)
    }

    /// Whether the peer (REMOTE_ADDR: an IP address, or `localhost` on Unix sockets)
    /// is trusted.
    pub fn trusts(&self, remote_addr: &str) -> bool {
        match self {
            TrustedPeers::Nobody => false,
            TrustedPeers::Everyone => true,
            TrustedPeers::Listed {
                networks,
                localhost,
            } => {
                if remote_addr == "localhost" {
                    return *localhost;
                }
                let Ok(ip) = remote_addr.parse::<IpAddr>() else {
                    return false;
                };
                networks
                    .iter()
                    .any(|&(net, prefix)| in_network(ip, net, prefix))
            }
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// What the environ builder decided about a request's forwarding headers.
pub enum Decision {
    /// Build the environ with these headers removed (bits of `HEADERS`) and,
    /// for a trusted peer, these overrides.
    Build {
        drop: u8,
        overrides: Option<Overrides>,
    },
    /// A trusted proxy sent a header that cannot be used: answer 400.
    Reject(Malformed),
}

/// The proxy options, validated by the Python layer.
#[derive(Clone, Debug, Default)]
pub struct ProxyConfig {
    pub trusted: TrustedPeers,
    pub count: usize,
    /// Which headers to believe from a trusted peer (bits above).
    pub headers: u8,
    pub clear_untrusted: bool,
    pub log_untrusted: bool,
}

/// The forwarding header values of one request (repeats joined with ", ").
#[derive(Clone, Debug, Default)]
pub struct ForwardingValues {
    pub values: [Option<String>; 6],
}

impl ForwardingValues {
    fn get(&self, bit: u8) -> Option<&str> {
        HEADERS
            .iter()
            .position(|(b, _, _)| *b == bit)
            .and_then(|i| self.values[i].as_deref())
    }

    pub fn set(&mut self, bit: u8, value: String) {
        if let Some(i) = HEADERS.iter().position(|(b, _, _)| *b == bit) {
            self.values[i] = Some(value);
        }
    }

    pub fn present(&self) -> u8 {
        HEADERS
            .iter()
            .zip(&self.values)
            .filter(|(_, v)| v.is_some())
            .fold(0, |acc, ((bit, _, _), _)| acc | bit)
    }
}

/// What a trusted peer's headers change in the environ.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub url_scheme: Option<String>,
    pub server_name: Option<String>,
    pub server_port: Option<String>,
    pub http_host: Option<String>,
    pub remote_addr: Option<String>,
    pub remote_port: Option<String>,
    /// Forwarding header values rewritten to the trusted hops: (bit, new value).
    pub rewritten: Vec<(u8, String)>,
    /// Headers that stay untrusted (removed when `clear_untrusted`).
    pub untrusted: u8,
    /// Unknown Forwarded tokens (logged as warnings).
    pub unknown_tokens: Vec<String>,
}

/// A header a trusted proxy sent that cannot be used: the request gets a 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub header: String,
    pub reason: String,
    pub value: String,
}

fn malformed(header: &str, reason: impl Into<String>, value: &str) -> Malformed {
    Malformed {
        header: header.into(),
        reason: reason.into(),
        value: value.into(),
    }
}

/// Python's `str.strip()` for latin-1 text.
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| {
        matches!(
            c,
            '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1c'..='\x1f' | ' ' | '\u{85}' | '\u{a0}'
        )
    })
}

/// Removes the quotes of a valid quoted-string (and its backslash escapes); leaves a
/// value without quotes alone; anything half-quoted is an error.
pub fn undquote(value: &str) -> Result<String, String> {
    let starts = value.starts_with('"');
    let ends = value.ends_with('"');
    if !starts && !ends {
        return Ok(value.to_owned());
    }
    let invalid = || "Invalid quoting in value".to_owned();
    if !(starts && ends) || value.len() < 2 {
        return Err(invalid());
    }
    let inner: Vec<char> = value[1..value.len() - 1].chars().collect();
    let mut out = String::with_capacity(inner.len());
    let mut i = 0;
    let qdtext =
        |c: char| matches!(c, '\t' | ' ' | '!' | '#'..='[' | ']'..='~' | '\u{80}'..='\u{ff}');
    let quoted_pair = |c: char| matches!(c, '\t' | ' '..='~' | '\u{80}'..='\u{ff}');
    while i < inner.len() {
        let c = inner[i];
        if c == '\\' {
            match inner.get(i + 1) {
                Some(&next) if quoted_pair(next) => {
                    out.push(next);
                    i += 2;
                    continue;
                }
                _ => return Err(invalid()),
            }
        }
        if !qdtext(c) {
            return Err(invalid());
        }
        out.push(c);
        i += 1;
    }
    Ok(out)
}

fn last_hops<T: Clone>(items: &[T], count: usize) -> Vec<T> {
    items[items.len().saturating_sub(count)..].to_vec()
}

/// The raw comma-separated parts of the last `count` hops, re-joined (what Waitress
/// leaves in the environ for the trusted part of a forwarding header).
fn trimmed_raw(value: &str, count: usize) -> String {
    let raw: Vec<&str> = value.split(',').collect();
    py_strip(&last_hops(&raw, count).join(",")).to_owned()
}

/// What the trusted headers say so far, before it becomes `Overrides`.
#[derive(Default)]
struct Claims {
    client_addr: Option<String>,
    host: String,
    proto: String,
    port: String,
}

const SINGLE: &str = "Unspecified behavior for multiple values found in header";

/// Applies a trusted peer's forwarding headers. `url_scheme` is the server's default
/// scheme (used to decide whether HTTP_HOST needs an explicit port).
pub fn evaluate(
    config: &ProxyConfig,
    values: &ForwardingValues,
    url_scheme: &str,
) -> Result<Overrides, Malformed> {
    let count = config.count.max(1);
    let trusted = config.headers;
    let mut out = Overrides {
        untrusted: ALL_HEADERS,
        ..Overrides::default()
    };
    let mut claims = Claims::default();
    if trusted & X_FORWARDED_FOR != 0 {
        if let Some(value) = values.get(X_FORWARDED_FOR) {
            claims.client_addr = x_forwarded_for(value, count)?;
            out.trust(X_FORWARDED_FOR, trimmed_raw(value, count));
        }
    }
    if trusted & X_FORWARDED_HOST != 0 {
        if let Some(value) = values.get(X_FORWARDED_HOST) {
            claims.host = x_forwarded_host(value, count)?;
            out.trust(X_FORWARDED_HOST, trimmed_raw(value, count));
        }
    }
    if trusted & X_FORWARDED_PROTO != 0 {
        claims.proto = single_value("X-Forwarded-Proto", values.get(X_FORWARDED_PROTO))?;
        out.untrusted &= !X_FORWARDED_PROTO;
    }
    if trusted & X_FORWARDED_PORT != 0 {
        claims.port = single_value("X-Forwarded-Port", values.get(X_FORWARDED_PORT))?;
        out.untrusted &= !X_FORWARDED_PORT;
    }
    if trusted & X_FORWARDED_BY != 0 {
        out.untrusted &= !X_FORWARDED_BY;
    }
    let mut forwarded = None;
    if trusted & FORWARDED != 0 {
        forwarded = values.get(FORWARDED).filter(|v| !v.is_empty());
        out.untrusted = ALL_HEADERS & !FORWARDED;
    }
    if let Some(value) = forwarded {
        apply_forwarded(value, count, &mut claims, &mut out)?;
    }
    let scheme = apply_proto(&mut claims, forwarded.is_some(), url_scheme, &mut out)?;
    apply_host(&mut claims, &scheme, &mut out);
    if !claims.port.is_empty() {
        out.server_port = Some(std::mem::take(&mut claims.port));
    }
    if let Some(addr) = claims.client_addr.filter(|a| !a.is_empty()) {
        apply_client(&addr, &mut out);
    }
    Ok(out)
}

impl Overrides {
    /// A header is trusted, and its value is rewritten to the trusted hops.
    fn trust(&mut self, bit: u8, trimmed: String) {
        self.untrusted &= !bit;
        self.rewritten.push((bit, trimmed));
    }
}

/// X-Forwarded-For: the client is the oldest of the trusted hops (IPv6 addresses
/// bracketed, so a port can follow).
fn x_forwarded_for(value: &str, count: usize) -> Result<Option<String>, Malformed> {
    let mut hops = Vec::new();
    for hop in value.split(',') {
        let hop = undquote(py_strip(hop)).map_err(|e| malformed("X-Forwarded-For", e, value))?;
        if !hop.contains('.') && hop.contains(':') && !hop.ends_with(']') {
            hops.push(format!("[{hop}]"));
        } else {
            hops.push(hop);
        }
    }
    Ok(last_hops(&hops, count).into_iter().next())
}

/// X-Forwarded-Host: the host of the oldest trusted hop.
fn x_forwarded_host(value: &str, count: usize) -> Result<String, Malformed> {
    let mut hosts = Vec::new();
    for host in value.split(',') {
        hosts.push(undquote(py_strip(host)).map_err(|e| malformed("X-Forwarded-Host", e, value))?);
    }
    Ok(last_hops(&hosts, count)
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// X-Forwarded-Proto and -Port take one value only.
fn single_value(header: &str, value: Option<&str>) -> Result<String, Malformed> {
    let value = value.unwrap_or("");
    let unquoted = undquote(value).map_err(|e| malformed(header, e, value))?;
    if unquoted.contains(',') {
        return Err(malformed(header, SINGLE, value));
    }
    Ok(unquoted)
}

/// Forwarded (RFC 7239): the oldest trusted element that has a value wins; the last
/// element's host and proto (possibly empty) when none has. It replaces whatever the
/// X-Forwarded headers said of the port.
fn apply_forwarded(
    value: &str,
    count: usize,
    claims: &mut Claims,
    out: &mut Overrides,
) -> Result<(), Malformed> {
    let elements = parse_forwarded(value, &mut out.unknown_tokens)
        .map_err(|e| malformed("Forwarded", e, value))?;
    out.rewritten.push((FORWARDED, trimmed_raw(value, count)));
    if let Some(last) = elements.last() {
        claims.host = last.host.clone();
        claims.proto = last.proto.clone();
    }
    claims.port.clear();
    for element in last_hops(&elements, count).iter().rev() {
        if !element.for_.is_empty() {
            claims.client_addr = Some(element.for_.clone());
        }
        if !element.host.is_empty() {
            claims.host = element.host.clone();
        }
        if !element.proto.is_empty() {
            claims.proto = element.proto.clone();
        }
    }
    Ok(())
}

/// The scheme: the server's default, or the trusted proto (http or https only), which
/// also gives the port when none was forwarded.
fn apply_proto(
    claims: &mut Claims,
    from_forwarded: bool,
    url_scheme: &str,
    out: &mut Overrides,
) -> Result<String, Malformed> {
    if claims.proto.is_empty() {
        return Ok(url_scheme.to_owned());
    }
    let proto = claims.proto.to_lowercase();
    if proto != "http" && proto != "https" {
        let header = if from_forwarded {
            "Forwarded Proto="
        } else {
            "X-Forwarded-Proto"
        };
        return Err(malformed(header, "unsupported proto value", &proto));
    }
    if claims.port.is_empty() {
        claims.port = if proto == "http" { "80" } else { "443" }.to_owned();
    }
    out.url_scheme = Some(proto.clone());
    Ok(proto)
}

/// SERVER_NAME and HTTP_HOST from the trusted host (a port in it wins; otherwise the
/// port is added to HTTP_HOST unless it is the scheme's default).
fn apply_host(claims: &mut Claims, scheme: &str, out: &mut Overrides) {
    let host = &claims.host;
    if host.is_empty() {
        return;
    }
    if host.contains(':') && !host.ends_with(']') {
        let (name, port) = host.rsplit_once(':').unwrap_or((host, ""));
        out.server_name = Some(py_strip(name).to_owned());
        claims.port = port.to_owned();
        out.http_host = Some(host.clone());
        return;
    }
    out.server_name = Some(host.clone());
    let port = claims.port.as_str();
    let explicit_port = !port.is_empty()
        && (!matches!(port, "80" | "443")
            || (port == "80" && scheme != "http")
            || (port == "443" && scheme != "https"));
    out.http_host = Some(if explicit_port {
        format!("{host}:{port}")
    } else {
        host.clone()
    });
}

/// REMOTE_ADDR (and REMOTE_PORT, if the address carries one) from the trusted client.
fn apply_client(addr: &str, out: &mut Overrides) {
    if addr.contains(':') && !addr.ends_with(']') {
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
        out.remote_addr = Some(strip_brackets(py_strip(host)).to_owned());
        out.remote_port = Some(py_strip(port).to_owned());
    } else {
        out.remote_addr = Some(strip_brackets(py_strip(addr)).to_owned());
    }
}

/// Decides what to do with the request's forwarding headers (Waitress's proxy
/// middleware): which to drop, and what a trusted peer's headers change. Also
/// returns log lines (unknown Forwarded tokens, removed untrusted headers).
pub fn decide(
    config: &ProxyConfig,
    head: &RequestHead,
    peer: &str,
    url_scheme: &str,
) -> (Decision, Vec<String>) {
    let mut logs = Vec::new();
    let mut values = ForwardingValues::default();
    for (name, value) in head.fields() {
        let Some(bit) = header_bit(name) else {
            continue;
        };
        let text: String = value.iter().map(|&b| b as char).collect();
        let joined = match values.values[bit_index(bit)].take() {
            Some(earlier) => format!("{earlier}, {text}"),
            None => text,
        };
        values.set(bit, joined);
    }
    let present = values.present();
    if present == 0 && config.trusted.is_nobody() {
        return (
            Decision::Build {
                drop: 0,
                overrides: None,
            },
            logs,
        );
    }
    let mut overrides = None;
    let mut untrusted = ALL_HEADERS;
    if config.trusted.trusts(peer) {
        match evaluate(config, &values, url_scheme) {
            Ok(o) => {
                untrusted = o.untrusted;
                for token in &o.unknown_tokens {
                    logs.push(format!("Unknown Forwarded token: {token}"));
                }
                overrides = Some(o);
            }
            Err(bad) => {
                logs.push(format!(
                    "Malformed proxy header \"{}\" from \"{peer}\": {} value: {}",
                    bad.header, bad.reason, bad.value
                ));
                return (Decision::Reject(bad), logs);
            }
        }
    }
    let drop = if config.clear_untrusted {
        untrusted & present
    } else {
        0
    };
    if config.log_untrusted && drop != 0 {
        let names: Vec<&str> = HEADERS
            .iter()
            .filter(|(bit, _, _)| drop & bit != 0)
            .map(|(_, _, name)| *name)
            .collect();
        logs.push(format!(
            "Removed untrusted headers ({}). Tapster recommends these be removed upstream.",
            names.join(", ")
        ));
    }
    (Decision::Build { drop, overrides }, logs)
}

fn bit_index(bit: u8) -> usize {
    bit.trailing_zeros() as usize
}

fn strip_brackets(addr: &str) -> &str {
    if addr.len() >= 2 && addr.starts_with('[') && addr.ends_with(']') {
        &addr[1..addr.len() - 1]
    } else {
        addr
    }
}

#[derive(Clone, Debug, Default)]
struct ForwardedElement {
    for_: String,
    host: String,
    proto: String,
}

/// RFC 7239: elements separated by `,`, pairs by `;`, `token=value` (lower-cased).
fn parse_forwarded(
    value: &str,
    unknown: &mut Vec<String>,
) -> Result<Vec<ForwardedElement>, String> {
    let mut elements = Vec::new();
    for element in value.split(',') {
        let mut parsed = ForwardedElement::default();
        for pair in py_strip(element).split(';') {
            let pair = pair.to_lowercase();
            if pair.is_empty() {
                continue;
            }
            let Some((token, value)) = pair.split_once('=') else {
                return Err("Invalid forwarded-pair missing \"=\"".into());
            };
            if py_strip(token) != token {
                return Err("Token may not be surrounded by whitespace".into());
            }
            if py_strip(value) != value {
                return Err("Value may not be surrounded by whitespace".into());
            }
            match token {
                "by" => {
                    undquote(value)?;
                }
                "for" => parsed.for_ = undquote(value)?,
                "host" => parsed.host = undquote(value)?,
                "proto" => parsed.proto = undquote(value)?,
                other => unknown.push(other.to_owned()),
            }
        }
        elements.push(parsed);
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(headers: u8, count: usize) -> ProxyConfig {
        ProxyConfig {
            trusted: TrustedPeers::Everyone,
            count,
            headers,
            clear_untrusted: true,
            log_untrusted: false,
        }
    }

    fn values(pairs: &[(u8, &str)]) -> ForwardingValues {
        let mut v = ForwardingValues::default();
        for (bit, value) in pairs {
            v.set(*bit, (*value).to_owned());
        }
        v
    }

    #[test]
    fn trusted_peers() {
        let peers = TrustedPeers::parse(Some("10.0.0.0/8, 127.0.0.1 ::1 localhost")).unwrap();
        assert!(peers.trusts("10.1.2.3"));
        assert!(peers.trusts("127.0.0.1"));
        assert!(!peers.trusts("127.0.0.2"));
        assert!(peers.trusts("::1"));
        assert!(peers.trusts("localhost"));
        assert!(!TrustedPeers::parse(Some("10.0.0.0/8"))
            .unwrap()
            .trusts("127.0.0.1"));
        assert!(TrustedPeers::parse(Some("*")).unwrap().trusts("8.8.8.8"));
        assert!(!TrustedPeers::parse(None).unwrap().trusts("127.0.0.1"));
        assert!(TrustedPeers::parse(Some("not-an-ip")).is_err());
        assert!(TrustedPeers::parse(Some("10.0.0.0/33")).is_err());
    }

    #[test]
    fn undquoting() {
        assert_eq!(undquote("abc").unwrap(), "abc");
        assert_eq!(undquote("\"a\\\"b\"").unwrap(), "a\"b");
        assert!(undquote("\"abc").is_err());
        assert!(undquote("abc\"").is_err());
        assert!(undquote("\"").is_err());
    }

    #[test]
    fn x_forwarded_for_takes_the_trusted_hops() {
        let v = values(&[(X_FORWARDED_FOR, "192.0.2.1, 198.51.100.2, 203.0.113.3")]);
        let out = evaluate(&config(X_FORWARDED_FOR, 2), &v, "http").unwrap();
        assert_eq!(out.remote_addr.as_deref(), Some("198.51.100.2"));
        assert_eq!(
            out.rewritten,
            vec![(X_FORWARDED_FOR, "198.51.100.2, 203.0.113.3".to_owned())]
        );
        assert_eq!(out.untrusted & X_FORWARDED_FOR, 0);
        let v = values(&[(X_FORWARDED_FOR, "2001:db8::1")]);
        let out = evaluate(&config(X_FORWARDED_FOR, 1), &v, "http").unwrap();
        assert_eq!(out.remote_addr.as_deref(), Some("2001:db8::1"));
        let v = values(&[(X_FORWARDED_FOR, "192.0.2.1:4567")]);
        let out = evaluate(&config(X_FORWARDED_FOR, 1), &v, "http").unwrap();
        assert_eq!(
            (out.remote_addr.as_deref(), out.remote_port.as_deref()),
            (Some("192.0.2.1"), Some("4567"))
        );
    }

    #[test]
    fn proto_host_and_port() {
        let all = X_FORWARDED_HOST | X_FORWARDED_PROTO | X_FORWARDED_PORT;
        let v = values(&[
            (X_FORWARDED_PROTO, "https"),
            (X_FORWARDED_HOST, "example.com"),
        ]);
        let out = evaluate(&config(all, 1), &v, "http").unwrap();
        assert_eq!(out.url_scheme.as_deref(), Some("https"));
        assert_eq!(out.server_port.as_deref(), Some("443"));
        assert_eq!(out.http_host.as_deref(), Some("example.com"));
        assert_eq!(out.server_name.as_deref(), Some("example.com"));
        let v = values(&[
            (X_FORWARDED_PROTO, "https"),
            (X_FORWARDED_HOST, "example.com"),
            (X_FORWARDED_PORT, "8443"),
        ]);
        let out = evaluate(&config(all, 1), &v, "http").unwrap();
        assert_eq!(out.http_host.as_deref(), Some("example.com:8443"));
        let v = values(&[(X_FORWARDED_HOST, "example.com:8080")]);
        let out = evaluate(&config(all, 1), &v, "http").unwrap();
        assert_eq!(
            (out.server_name.as_deref(), out.server_port.as_deref()),
            (Some("example.com"), Some("8080"))
        );
        let v = values(&[(X_FORWARDED_PROTO, "ftp")]);
        assert_eq!(
            evaluate(&config(all, 1), &v, "http").unwrap_err().header,
            "X-Forwarded-Proto"
        );
        let v = values(&[(X_FORWARDED_PROTO, "http,https")]);
        assert!(evaluate(&config(all, 1), &v, "http").is_err());
    }

    #[test]
    fn forwarded_oldest_trusted_value_wins() {
        let v = values(&[(FORWARDED, "for=192.0.2.60;proto=https;host=example.com:8443, for=198.51.100.17;host=internal:8080")]);
        let out = evaluate(&config(FORWARDED, 2), &v, "http").unwrap();
        assert_eq!(out.remote_addr.as_deref(), Some("192.0.2.60"));
        assert_eq!(out.url_scheme.as_deref(), Some("https"));
        assert_eq!(out.server_name.as_deref(), Some("example.com"));
        assert_eq!(out.server_port.as_deref(), Some("8443"));
        assert_eq!(out.untrusted & FORWARDED, 0);
        assert_eq!(out.untrusted & X_FORWARDED_FOR, X_FORWARDED_FOR);
        let out = evaluate(&config(FORWARDED, 1), &v, "http").unwrap();
        assert_eq!(out.remote_addr.as_deref(), Some("198.51.100.17"));
        let bad = values(&[(FORWARDED, "for")]);
        assert_eq!(
            evaluate(&config(FORWARDED, 1), &bad, "http")
                .unwrap_err()
                .header,
            "Forwarded"
        );
        let spaced = values(&[(FORWARDED, "for = 1.2.3.4")]);
        assert!(evaluate(&config(FORWARDED, 1), &spaced, "http").is_err());
    }
}
