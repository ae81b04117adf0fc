//! Port-forward sessions: over SPDY (also tunnelled in WebSocket), and the older
//! WebSocket channel protocol.

pub mod spdy;
pub mod websocket;

/// Buffer of the pipe between a session and the backend, per forwarded connection.
const PIPE: usize = 64 << 10;
