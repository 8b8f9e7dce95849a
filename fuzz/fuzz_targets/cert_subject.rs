//! Fuzzes the reader of a client certificate's subject (`server/cert_subject.rs`) on
//! arbitrary bytes, as a certificate rustls accepted but nobody else checked would be.
//!
//! Checks: nothing panics; a subject it reads is one line (no control character
//! survives escaping), and a value's `,` `+` `;` are always escaped, so the RDNs of
//! the string are the RDNs of the DER.

#![no_main]

use libfuzzer_sys::fuzz_target;

use _tapster::server::cert_subject::subject;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = subject(data) {
        assert!(!name.chars().any(char::is_control), "{name:?}");
        let mut escaped = false;
        for c in name.chars() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            }
        }
        assert!(!escaped, "a dangling escape: {name:?}");
    }
});
