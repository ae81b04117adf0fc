//! Terminal resize events: a stream of JSON objects `{"Width":..,"Height":..}`.
//! client-go's type has no JSON tags, so the names arrive capitalised; any casing is
//! accepted. Objects may be split across frames, so the decoder is incremental.

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::backend::TerminalSize;

/// Longest incomplete event kept while waiting for its end.
const MAX_PENDING: usize = 4096;

/// A resize stream that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResizeError {
    /// Not JSON, or not an object with numeric width and height.
    #[error("malformed resize event")]
    Malformed,
    /// An event longer than [`MAX_PENDING`] bytes.
    #[error("resize event too long")]
    TooLong,
}

/// Splits a byte stream into resize events.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    pending: Vec<u8>,
}

impl ResizeDecoder {
    /// Adds bytes; returns the events they complete.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, ResizeError> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut iter = serde_json::Deserializer::from_slice(&self.pending).into_iter::<Value>();
        let mut used = 0;
        loop {
            match iter.next() {
                Some(Ok(v)) => {
                    used = iter.byte_offset();
                    out.push(size(&v).ok_or(ResizeError::Malformed)?);
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return Err(ResizeError::Malformed),
                None => {
                    used = self.pending.len();
                    break;
                }
            }
        }
        self.pending.drain(..used);
        if self.pending.len() > MAX_PENDING {
            return Err(ResizeError::TooLong);
        }
        Ok(out)
    }
}

fn size(v: &Value) -> Option<TerminalSize> {
    let obj = v.as_object()?;
    let field = |name: &str| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_u64())
            .map(|n| n.min(u64::from(u16::MAX)) as u16)
    };
    Some(TerminalSize {
        width: field("width")?,
        height: field("height")?,
    })
}

/// Reads resize events from `r` and sends them on until either side ends.
pub async fn pump<R: AsyncRead + Unpin>(mut r: R, tx: mpsc::Sender<TerminalSize>) {
    let mut dec = ResizeDecoder::default();
    let mut buf = [0u8; 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match dec.push(&buf[..n]) {
            Ok(sizes) => {
                for s in sizes {
                    if tx.send(s).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "resize stream ends");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_casing_and_split_events() {
        let mut d = ResizeDecoder::default();
        let ts = |width, height| TerminalSize { width, height };
        assert_eq!(d.push(b"{\"Width\":80,\"Hei").unwrap(), vec![]);
        assert_eq!(
            d.push(b"ght\":24}\n{\"width\":100,").unwrap(),
            vec![ts(80, 24)]
        );
        assert_eq!(
            d.push(b"\"height\":30}\n{\"WIDTH\":1,\"HEIGHT\":2}")
                .unwrap(),
            vec![ts(100, 30), ts(1, 2)]
        );
        assert_eq!(d.push(b"[1]"), Err(ResizeError::Malformed));
        let mut d = ResizeDecoder::default();
        let mut long = b"{\"Width\":\"".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_PENDING + 1));
        assert_eq!(d.push(&long), Err(ResizeError::TooLong));
    }
}
