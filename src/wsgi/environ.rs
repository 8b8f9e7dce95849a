//! Builds the WSGI environ (PEP 3333 plus Waitress's extra keys) for one request.
//!
//! Keys are interned Python strings created once per server, and values that never
//! change (protocol names, common methods, url scheme, server name) are cached objects,
//! so a typical request allocates only the strings that really differ.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule, PyString, PyTuple};

use super::WsgiConfig;
use crate::http::target::{
    absolute_form_authority, collapse_leading_slashes, percent_decode, split_target, strip_prefix,
};
use crate::http::{BodyFraming, RequestHead, Version};
use crate::proxy::{self, Overrides, ProxyConfig};
use crate::server::{ClientTransport, ConnInfo, Peer};

/// A Python `str` from bytes taken as latin-1 (PEP 3333's "bytes tunnelled in str").
pub fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    let len = pyo3::ffi::Py_ssize_t::try_from(bytes.len())
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("string too long"))?;
    // SAFETY: the pointer and length describe a live byte slice; DecodeLatin1 copies it
    // and returns a new reference or NULL with an exception set.
    unsafe {
        let ptr = pyo3::ffi::PyUnicode_DecodeLatin1(bytes.as_ptr().cast(), len, std::ptr::null());
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked())
    }
}

macro_rules! keys {
    ($($field:ident = $name:literal),* $(,)?) => {
        /// Interned environ keys.
        struct Keys { $($field: Py<PyString>,)* }
        impl Keys {
            fn new(py: Python<'_>) -> Keys {
                Keys { $($field: PyString::intern(py, $name).unbind(),)* }
            }
        }
    };
}

keys! {
    request_method = "REQUEST_METHOD",
    script_name = "SCRIPT_NAME",
    path_info = "PATH_INFO",
    query_string = "QUERY_STRING",
    request_uri = "REQUEST_URI",
    server_name = "SERVER_NAME",
    server_port = "SERVER_PORT",
    server_protocol = "SERVER_PROTOCOL",
    server_software = "SERVER_SOFTWARE",
    remote_addr = "REMOTE_ADDR",
    remote_host = "REMOTE_HOST",
    remote_port = "REMOTE_PORT",
    content_length = "CONTENT_LENGTH",
    content_type = "CONTENT_TYPE",
    http_host = "HTTP_HOST",
    wsgi_version = "wsgi.version",
    wsgi_url_scheme = "wsgi.url_scheme",
    wsgi_input = "wsgi.input",
    wsgi_errors = "wsgi.errors",
    wsgi_multithread = "wsgi.multithread",
    wsgi_multiprocess = "wsgi.multiprocess",
    wsgi_run_once = "wsgi.run_once",
    wsgi_input_terminated = "wsgi.input_terminated",
    wsgi_file_wrapper = "wsgi.file_wrapper",
    waitress_disconnected = "waitress.client_disconnected",
    tapster_disconnected = "tapster.client_disconnected",
}

/// Header names whose environ keys are interned up front.
const COMMON_FIELDS: &[&str] = &[
    "HOST",
    "USER_AGENT",
    "ACCEPT",
    "ACCEPT_ENCODING",
    "ACCEPT_LANGUAGE",
    "ACCEPT_CHARSET",
    "CONNECTION",
    "COOKIE",
    "CACHE_CONTROL",
    "PRAGMA",
    "REFERER",
    "ORIGIN",
    "AUTHORIZATION",
    "IF_MODIFIED_SINCE",
    "IF_NONE_MATCH",
    "IF_MATCH",
    "IF_UNMODIFIED_SINCE",
    "IF_RANGE",
    "RANGE",
    "UPGRADE_INSECURE_REQUESTS",
    "DNT",
    "TE",
    "VIA",
    "EXPECT",
    "X_REQUESTED_WITH",
    "X_REAL_IP",
    "X_CSRFTOKEN",
    "X_CSRF_TOKEN",
    "SEC_FETCH_DEST",
    "SEC_FETCH_MODE",
    "SEC_FETCH_SITE",
    "SEC_FETCH_USER",
    "SEC_CH_UA",
    "SEC_CH_UA_MOBILE",
    "SEC_CH_UA_PLATFORM",
    "KEEP_ALIVE",
    "PRIORITY",
    "CONTENT_ENCODING",
    "CONTENT_MD5",
    "ACCEPT_DATETIME",
];

/// Most header keys remembered after start-up (names outside `COMMON_FIELDS`).
const MAX_LEARNED_FIELDS: usize = 512;

const METHODS: &[&str] = &["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Everything about the environ that is the same for every request of a server.
pub struct EnvironTemplate {
    keys: Keys,
    /// A dict holding every base key in order, with the constant values filled in and
    /// `None` where each request puts its own. Copying it is cheaper than building a
    /// dict key by key, and leaves room for the header keys without resizing.
    base: Py<PyDict>,
    http10: Py<PyString>,
    http11: Py<PyString>,
    http2: Py<PyString>,
    localhost: Py<PyString>,
    none_str: Py<PyString>,
    /// `wsgi.url_scheme` of a connection that came over TLS to a load balancer.
    https: Py<PyString>,
    methods: Vec<Py<PyString>>,
    sys: Py<PyModule>,
    /// `HTTP_*` key bytes (after the prefix) to interned key objects.
    fields: Mutex<HashMap<Vec<u8>, Py<PyString>>>,
    url_prefix: Vec<u8>,
    proxy: ProxyConfig,
    /// The default scheme (trusted proxies may override it per request).
    url_scheme: String,
}

/// Python objects made once per connection.
struct ConnObjects {
    remote_addr: Py<PyString>,
    remote_port: Py<PyString>,
    disconnected: Py<DisconnectCheck>,
}

/// Python objects made once per listener.
struct ListenerObjects {
    server_port: Py<PyString>,
}

/// The `waitress.client_disconnected` / `tapster.client_disconnected` callable.
///
/// It is cached in the connection's `app_data`, so it must not own the connection: a
/// strong reference would be a cycle (connection -> cache -> check -> connection) that
/// Python's collector cannot see through the `Arc`, and every connection would leak.
#[pyclass(module = "tapster._tapster", name = "ClientDisconnectedCheck", frozen)]
pub struct DisconnectCheck {
    conn: Weak<ConnInfo>,
}

#[pymethods]
impl DisconnectCheck {
    /// True once the client is gone; a connection that no longer exists is gone too.
    fn __call__(&self) -> bool {
        self.conn
            .upgrade()
            .is_none_or(|conn| conn.client_disconnected())
    }
}

/// Header names longer than this are upper-cased on the heap instead of the stack.
const FIELD_NAME_STACK: usize = 64;

impl EnvironTemplate {
    pub fn new(
        py: Python<'_>,
        config: &WsgiConfig,
        ident: Option<&str>,
        file_wrapper: Py<PyAny>,
    ) -> PyResult<EnvironTemplate> {
        let fields = COMMON_FIELDS
            .iter()
            .map(|name| {
                let key = PyString::intern(py, &format!("HTTP_{name}")).unbind();
                (name.as_bytes().to_vec(), key)
            })
            .collect();
        let keys = Keys::new(py);
        let none = py.None();
        let server_software = match ident {
            Some(ident) => PyString::new(py, ident).into_any().unbind(),
            None => py.None(),
        };
        let base = PyDict::new(py);
        let k = &keys;
        base.set_item(&k.request_method, &none)?;
        base.set_item(&k.script_name, PyString::new(py, &config.url_prefix))?;
        base.set_item(&k.path_info, &none)?;
        base.set_item(&k.query_string, &none)?;
        base.set_item(&k.request_uri, &none)?;
        base.set_item(&k.server_name, PyString::new(py, &config.server_name))?;
        base.set_item(&k.server_port, &none)?;
        base.set_item(&k.server_protocol, &none)?;
        base.set_item(&k.server_software, server_software)?;
        base.set_item(&k.remote_addr, &none)?;
        base.set_item(&k.remote_host, &none)?;
        base.set_item(&k.remote_port, &none)?;
        base.set_item(&k.wsgi_version, PyTuple::new(py, [1, 0])?)?;
        base.set_item(&k.wsgi_url_scheme, PyString::intern(py, &config.url_scheme))?;
        base.set_item(&k.wsgi_input, &none)?;
        base.set_item(&k.wsgi_errors, &none)?;
        base.set_item(&k.wsgi_multithread, true)?;
        base.set_item(&k.wsgi_multiprocess, false)?;
        base.set_item(&k.wsgi_run_once, false)?;
        base.set_item(&k.wsgi_input_terminated, true)?;
        base.set_item(&k.wsgi_file_wrapper, file_wrapper)?;
        base.set_item(&k.waitress_disconnected, &none)?;
        base.set_item(&k.tapster_disconnected, &none)?;
        Ok(EnvironTemplate {
            keys,
            base: base.unbind(),
            http10: PyString::intern(py, "HTTP/1.0").unbind(),
            http11: PyString::intern(py, "HTTP/1.1").unbind(),
            http2: PyString::intern(py, "HTTP/2").unbind(),
            localhost: PyString::intern(py, "localhost").unbind(),
            none_str: PyString::intern(py, "None").unbind(),
            https: PyString::intern(py, "https").unbind(),
            methods: METHODS
                .iter()
                .map(|m| PyString::intern(py, m).unbind())
                .collect(),
            sys: py.import("sys")?.unbind(),
            fields: Mutex::new(fields),
            url_prefix: config.url_prefix.as_bytes().to_vec(),
            proxy: config.proxy.clone(),
            url_scheme: config.url_scheme.clone(),
        })
    }

    /// The interned `HTTP_*` key for a header whose name was upper-cased with `-` → `_`.
    fn field_key<'py>(&self, py: Python<'py>, upper: &[u8]) -> PyResult<Bound<'py, PyString>> {
        let mut fields = self.fields.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = fields.get(upper) {
            return Ok(key.bind(py).clone());
        }
        let mut name = Vec::with_capacity(upper.len() + 5);
        name.extend_from_slice(b"HTTP_");
        name.extend_from_slice(upper);
        let key = latin1(py, &name)?;
        if fields.len() < MAX_LEARNED_FIELDS {
            fields.insert(upper.to_vec(), key.clone().unbind());
        }
        Ok(key)
    }

    fn method<'py>(&self, py: Python<'py>, method: &[u8]) -> PyResult<Bound<'py, PyString>> {
        for (name, obj) in METHODS.iter().zip(&self.methods) {
            if name.as_bytes() == method {
                return Ok(obj.bind(py).clone());
            }
        }
        latin1(py, method)
    }

    fn conn_objects<'a>(
        &self,
        py: Python<'_>,
        conn: &'a Arc<ConnInfo>,
    ) -> PyResult<&'a ConnObjects> {
        let cached = conn.app_data.get_or_try_init(|| -> PyResult<ConnObjects> {
            let (addr, port) = match &conn.peer {
                Peer::Tcp(addr) => (
                    PyString::new(py, &conn.peer.remote_addr()).unbind(),
                    PyString::new(py, &addr.port().to_string()).unbind(),
                ),
                Peer::Unix => (self.localhost.clone_ref(py), self.none_str.clone_ref(py)),
            };
            Ok(ConnObjects {
                remote_addr: addr,
                remote_port: port,
                disconnected: Py::new(
                    py,
                    DisconnectCheck {
                        conn: Arc::downgrade(conn),
                    },
                )?,
            })
        })?;
        cached.ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err("connection data of another kind")
        })
    }

    fn listener_objects<'a>(
        &self,
        py: Python<'_>,
        conn: &'a ConnInfo,
    ) -> PyResult<&'a ListenerObjects> {
        let listener = &conn.listener;
        let cached = listener
            .app_data
            .get_or_try_init(|| -> PyResult<ListenerObjects> {
                Ok(ListenerObjects {
                    server_port: PyString::new(py, &listener.server_port).unbind(),
                })
            })?;
        cached.ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err("listener data of another kind")
        })
    }

    /// The request's PATH_INFO as text, for log lines.
    pub fn path_for_log(&self, target: &[u8]) -> String {
        let (raw_path, _) = split_target(target);
        let decoded = percent_decode(raw_path);
        let path = strip_prefix(collapse_leading_slashes(&decoded), &self.url_prefix);
        String::from_utf8_lossy(path).into_owned()
    }

    /// What to do with the request's forwarding headers (`proxy::decide` with this
    /// server's proxy options, the client's address and the connection's scheme).
    pub fn proxy_decision(
        &self,
        head: &RequestHead,
        conn: &ConnInfo,
    ) -> (proxy::Decision, Vec<String>) {
        let scheme = match conn.transport {
            ClientTransport::AsConfigured => self.url_scheme.as_str(),
            ClientTransport::Tls => "https",
        };
        proxy::decide(&self.proxy, head, &conn.peer.remote_addr(), scheme)
    }

    /// Builds the environ; `input` is `wsgi.input`; `drop` and `overrides` come from
    /// `proxy::decide`.
    #[allow(clippy::too_many_arguments)]
    pub fn build<'py>(
        &self,
        py: Python<'py>,
        head: &RequestHead,
        body_len: u64,
        conn: &Arc<ConnInfo>,
        input: Bound<'py, PyAny>,
        drop: u8,
        overrides: Option<&Overrides>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let k = &self.keys;
        let env = self.base.bind(py).copy()?;
        let target = head.target();
        let (raw_path, query) = split_target(target);
        let decoded = percent_decode(raw_path);
        let path = collapse_leading_slashes(&decoded);
        let path_info = strip_prefix(path, &self.url_prefix);
        let listener = self.listener_objects(py, conn)?;
        if conn.transport == ClientTransport::Tls {
            // Before the overrides: trusted forwarding headers still win.
            env.set_item(&k.wsgi_url_scheme, self.https.bind(py))?;
        }
        if let Some(tls) = &conn.tls {
            // As Apache's mod_ssl names them.
            env.set_item("HTTPS", "on")?;
            env.set_item("SSL_PROTOCOL", tls.protocol)?;
            env.set_item("SSL_CIPHER", &tls.cipher)?;
            match &tls.client_subject {
                Some(subject) => {
                    env.set_item("SSL_CLIENT_VERIFY", "SUCCESS")?;
                    env.set_item("SSL_CLIENT_S_DN", subject)?;
                }
                None => env.set_item("SSL_CLIENT_VERIFY", "NONE")?,
            }
        }
        let conn = self.conn_objects(py, conn)?;

        env.set_item(&k.request_method, self.method(py, head.method())?)?;
        env.set_item(&k.path_info, latin1(py, path_info)?)?;
        env.set_item(&k.query_string, latin1(py, query)?)?;
        env.set_item(&k.request_uri, latin1(py, target)?)?;
        env.set_item(&k.server_port, listener.server_port.bind(py))?;
        let protocol = match head.version {
            Version::Http10 => &self.http10,
            Version::Http11 => &self.http11,
            Version::Http2 => &self.http2,
        };
        env.set_item(&k.server_protocol, protocol.bind(py))?;
        env.set_item(&k.remote_addr, conn.remote_addr.bind(py))?;
        env.set_item(&k.remote_host, conn.remote_addr.bind(py))?;
        env.set_item(&k.remote_port, conn.remote_port.bind(py))?;
        env.set_item(&k.wsgi_input, input)?;
        env.set_item(&k.wsgi_errors, self.sys.bind(py).getattr("stderr")?)?;
        env.set_item(&k.waitress_disconnected, conn.disconnected.bind(py))?;
        env.set_item(&k.tapster_disconnected, conn.disconnected.bind(py))?;
        self.add_fields(py, &env, head, body_len, drop, overrides)?;
        if let Some(authority) = absolute_form_authority(target) {
            // RFC 9112 section 3.2.2: the target's host wins over the Host header.
            env.set_item(&self.keys.http_host, latin1(py, authority)?)?;
        }
        if let Some(o) = overrides {
            let set = |key: &Py<PyString>, value: &Option<String>| -> PyResult<()> {
                match value {
                    Some(v) => env.set_item(key.bind(py), PyString::new(py, v)),
                    None => Ok(()),
                }
            };
            set(&k.wsgi_url_scheme, &o.url_scheme)?;
            set(&k.server_name, &o.server_name)?;
            set(&k.server_port, &o.server_port)?;
            set(&k.http_host, &o.http_host)?;
            set(&k.remote_addr, &o.remote_addr)?;
            set(&k.remote_host, &o.remote_addr)?;
            set(&k.remote_port, &o.remote_port)?;
        }
        Ok(env)
    }

    /// Adds CONTENT_TYPE, CONTENT_LENGTH and the `HTTP_*` keys.
    fn add_fields(
        &self,
        py: Python<'_>,
        env: &Bound<'_, PyDict>,
        head: &RequestHead,
        body_len: u64,
        drop: u8,
        overrides: Option<&Overrides>,
    ) -> PyResult<()> {
        let mut stack = [0u8; FIELD_NAME_STACK];
        for (index, (name, _)) in head.fields().enumerate() {
            if name.contains(&b'_') {
                // Underscores would make e.g. "X-Auth_User" collide with "X-Auth-User".
                continue;
            }
            let mut heap;
            let upper: &mut [u8] = if name.len() <= FIELD_NAME_STACK {
                &mut stack[..name.len()]
            } else {
                heap = vec![0u8; name.len()];
                &mut heap
            };
            cgi_name(name, upper);
            let upper: &[u8] = upper;
            if upper == b"TRANSFER_ENCODING" {
                continue;
            }
            let proxy_bit = proxy::header_bit(upper);
            if proxy_bit.is_some_and(|bit| drop & bit != 0) {
                continue;
            }
            // Repeated fields are joined with ", " in arrival order, under the first.
            if head.fields().take(index).any(|(n, _)| same_key(n, name)) {
                continue;
            }
            let rewritten = proxy_bit.and_then(|bit| {
                overrides.and_then(|o| o.rewritten.iter().find(|(b, _)| *b == bit).map(|(_, v)| v))
            });
            let value = match rewritten {
                Some(text) => PyString::new(py, text),
                None => latin1(py, &joined_value(head, index))?,
            };
            match upper {
                b"CONTENT_TYPE" => env.set_item(&self.keys.content_type, value)?,
                b"CONTENT_LENGTH" => {
                    if head.framing != BodyFraming::Chunked {
                        env.set_item(&self.keys.content_length, value)?;
                    }
                }
                _ => env.set_item(self.field_key(py, upper)?, value)?,
            }
        }
        if head.framing == BodyFraming::Chunked {
            env.set_item(&self.keys.content_length, body_len.to_string())?;
        }
        Ok(())
    }
}

/// A field name as a CGI variable name: upper case, `-` as `_` (into `out`, which has
/// the name's length).
fn cgi_name(name: &[u8], out: &mut [u8]) {
    for (out, &b) in out.iter_mut().zip(name) {
        *out = if b == b'-' {
            b'_'
        } else {
            b.to_ascii_uppercase()
        };
    }
}

/// The value of the field at `index`, with the values of later fields of the same name
/// joined to it by ", " in arrival order.
fn joined_value<'a>(head: &'a RequestHead, index: usize) -> Cow<'a, [u8]> {
    let mut fields = head.fields().skip(index);
    let Some((name, value)) = fields.next() else {
        return Cow::Borrowed(&[]);
    };
    let mut joined: Option<Vec<u8>> = None;
    for (n, v) in fields {
        if same_key(n, name) {
            let out = joined.get_or_insert_with(|| value.to_vec());
            out.extend_from_slice(b", ");
            out.extend_from_slice(v);
        }
    }
    joined.map_or(Cow::Borrowed(value), Cow::Owned)
}

/// Two field names give the same environ key: equal ignoring case (names with `_`,
/// which could collide with `-`, never get here).
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}
