//! SPDY/3.1, as far as Kubernetes streaming needs it: frames and header compression (`frame`),
//! the dictionary (`dictionary`), and a server-side session multiplexing streams over one
//! upgraded connection (`session`). Written from the SPDY/3.1 draft; no crate serves SPDY.

mod dictionary;
pub mod frame;
pub mod session;

pub use session::{Incoming, Session, SpdyStream};
