//! SPDY/3.1, the server side of the subset Kubernetes clients speak.

pub mod conn;
pub mod dictionary;
pub mod frame;
pub mod headers;

pub use conn::{Connection, SendHalf, Stream};
