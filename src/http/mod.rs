//! The HTTP/1.1 wire protocol, and what HTTP/2 needs translated into it, sans-IO: bytes in, request heads and body bytes or
//! errors out; response heads and body framing out. Nothing here touches a socket,
//! a thread or Python, so every rule can be unit-tested, property-tested and fuzzed.

pub mod body;
pub mod conditional;
pub mod date;
pub mod encoder;
pub mod error;
pub mod h2_guard;
pub mod h2_translate;
pub mod proxy_protocol;
pub mod request;
pub mod response;
pub mod static_path;
pub mod target;
pub mod version;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod proxy_proptests;
#[cfg(test)]
mod static_proptests;

pub use body::{BodyDecoder, Progress};
pub use error::{ErrorKind, HttpError};
pub use request::{BodyFraming, HeadLimits, HeadParser, RequestHead, Version};
