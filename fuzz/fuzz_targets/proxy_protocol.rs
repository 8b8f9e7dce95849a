//! Fuzzes the PROXY protocol parser (`http/proxy_protocol.rs`) on arbitrary bytes, as
//! the connection task drives it: the bytes so far, again and again as more arrive.
//!
//! Checks: nothing panics; a complete header never claims more bytes than it was given
//! and parses the same from exactly its own bytes (nothing after it is read); its two
//! addresses are of one family; a prefix of the input (cut where its first byte says,
//! and just before the end of a header) either needs more bytes or gives the answer the
//! whole input gives, so feeding in pieces cannot change what is accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;

use _tapster::http::proxy_protocol::{parse, Addresses, Parsed};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let whole = parse(input);
    let mut cuts = vec![usize::from(cut) % (input.len() + 1), input.len() / 2];
    if let Ok(Parsed::Complete { header, consumed }) = whole {
        assert!(consumed <= input.len(), "consumed more than given");
        assert!(consumed >= 15, "shorter than any header");
        assert_eq!(
            parse(&input[..consumed]),
            whole,
            "the header is not self-delimiting"
        );
        if let Addresses::Inet {
            source,
            destination,
        } = header.addresses
        {
            assert_eq!(source.is_ipv4(), destination.is_ipv4(), "mixed families");
        }
        cuts.extend([consumed - 1, consumed / 2]);
    }
    for end in cuts {
        let part = parse(&input[..end]);
        assert!(
            part == Ok(Parsed::Incomplete) || part == whole,
            "{part:?} from {end} bytes but {whole:?} from all"
        );
    }
});
