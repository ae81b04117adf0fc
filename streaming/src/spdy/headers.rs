//! SPDY/3 header blocks: the name/value list and its compression. Each direction of
//! a connection is one zlib stream preset with the SPDY dictionary and sync-flushed
//! after every block; the peer checks that a block ends exactly at its frame's end.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::DICTIONARY;

/// Most headers in one block.
pub const MAX_HEADERS: usize = 64;
/// Most bytes a block may decompress to.
pub const MAX_BLOCK: usize = 32 << 10;

/// A header block that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The block decompresses to more than [`MAX_BLOCK`] bytes.
    #[error("header block larger than {MAX_BLOCK} bytes")]
    TooLarge,
    /// More than [`MAX_HEADERS`] entries.
    #[error("{0} headers in one block (at most {MAX_HEADERS})")]
    TooMany(u32),
    /// The name/value list is cut short or inconsistent.
    #[error("malformed header block")]
    Malformed,
    /// A name with upper-case letters (SPDY/3 requires lower case).
    #[error("header name {0:?} is not lower case")]
    NotLowercase(String),
    /// zlib failed.
    #[error("header (de)compression: {0}")]
    Zlib(String),
}

/// A decoded header list, names lower case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// The value of `name` (any case), the first when repeated.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Adds an entry (name lowered).
    #[cfg(test)]
    pub fn push(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_owned()));
    }

    /// The uncompressed wire form: u32 count, then u32-length-prefixed names and values.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (n, v) in &self.0 {
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    /// Parses the uncompressed wire form. Values repeated with NUL separators keep
    /// their first part only (Kubernetes headers are single-valued).
    pub fn decode(mut b: &[u8]) -> Result<Self, HeaderError> {
        let count = take_u32(&mut b)?;
        if count as usize > MAX_HEADERS {
            return Err(HeaderError::TooMany(count));
        }
        let mut list = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name = take_str(&mut b)?;
            if name.bytes().any(|c| c.is_ascii_uppercase()) {
                return Err(HeaderError::NotLowercase(name));
            }
            let value = take_str(&mut b)?;
            let value = value.split('\0').next().unwrap_or_default().to_owned();
            list.push((name, value));
        }
        Ok(Headers(list))
    }
}

fn take_u32(b: &mut &[u8]) -> Result<u32, HeaderError> {
    let (head, rest) = b.split_first_chunk::<4>().ok_or(HeaderError::Malformed)?;
    *b = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_str(b: &mut &[u8]) -> Result<String, HeaderError> {
    let len = take_u32(b)? as usize;
    if len > b.len() {
        return Err(HeaderError::Malformed);
    }
    let (s, rest) = b.split_at(len);
    *b = rest;
    String::from_utf8(s.to_vec()).map_err(|_| HeaderError::Malformed)
}

/// The sending direction's zlib stream.
pub struct Compressor(Compress);

impl Compressor {
    /// A stream preset with the dictionary.
    pub fn new() -> Result<Self, HeaderError> {
        let mut c = Compress::new(Compression::best(), true);
        c.set_dictionary(&DICTIONARY)
            .map_err(|e| HeaderError::Zlib(e.to_string()))?;
        Ok(Self(c))
    }

    /// Compresses one block, sync-flushed.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, HeaderError> {
        let raw = headers.encode();
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start = self.0.total_in();
        loop {
            let done = (self.0.total_in() - start) as usize;
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            self.0
                .compress_vec(&raw[done..], &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Zlib(e.to_string()))?;
            let done = (self.0.total_in() - start) as usize;
            // Finished once all input is in and the flush fit in the buffer.
            if done == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The receiving direction's zlib stream.
pub struct Decompressor(Decompress);

impl Default for Decompressor {
    fn default() -> Self {
        Self(Decompress::new(true))
    }
}

impl Decompressor {
    /// Decompresses one block, at most [`MAX_BLOCK`] bytes, and parses it.
    pub fn decompress(&mut self, input: &[u8]) -> Result<Headers, HeaderError> {
        let mut out = Vec::with_capacity(512);
        let start = self.0.total_in();
        loop {
            let done = (self.0.total_in() - start) as usize;
            if out.len() == out.capacity() {
                if out.len() >= MAX_BLOCK {
                    return Err(HeaderError::TooLarge);
                }
                out.reserve((out.len()).min(MAX_BLOCK - out.len()));
            }
            let before = (self.0.total_in(), self.0.total_out());
            match self
                .0
                .decompress_vec(&input[done..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => return Err(HeaderError::Zlib("zlib stream ended".into())),
                Ok(_) => {}
                // The stream header names the dictionary: supply it and go on.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| HeaderError::Zlib(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(HeaderError::Zlib(e.to_string())),
            }
            let done = (self.0.total_in() - start) as usize;
            if done == input.len() && out.len() < out.capacity() {
                return Headers::decode(&out);
            }
            if before == (self.0.total_in(), self.0.total_out()) && out.len() < out.capacity() {
                // No progress with room left: the block is truncated.
                return Err(HeaderError::Malformed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::default();
        for (n, v) in pairs {
            h.push(n, v);
        }
        h
    }

    #[test]
    fn compression_round_trips_across_blocks() {
        let mut c = Compressor::new().unwrap();
        let mut d = Decompressor::default();
        for i in 0..20 {
            let h = headers(&[
                ("streamType", "data"),
                ("port", "8080"),
                ("requestID", &i.to_string()),
            ]);
            let z = c.compress(&h).unwrap();
            let back = d.decompress(&z).unwrap();
            assert_eq!(back.get("streamtype"), Some("data"));
            assert_eq!(back.get("requestid"), Some(i.to_string().as_str()));
        }
        let empty = c.compress(&Headers::default()).unwrap();
        assert_eq!(d.decompress(&empty).unwrap(), Headers::default());
    }

    #[test]
    fn bounds_and_validates() {
        let mut raw = (MAX_HEADERS as u32 + 1).to_be_bytes().to_vec();
        raw.extend_from_slice(&[0; 8]);
        assert!(matches!(
            Headers::decode(&raw),
            Err(HeaderError::TooMany(_))
        ));
        assert!(matches!(
            Headers::decode(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']),
            Err(HeaderError::Malformed)
        ));
        let upper = [0, 0, 0, 1, 0, 0, 0, 1, b'A', 0, 0, 0, 0];
        assert!(matches!(
            Headers::decode(&upper),
            Err(HeaderError::NotLowercase(_))
        ));
        // A block inflating past the limit is refused before it is all in memory.
        let big = headers(&[("x", &"a".repeat(MAX_BLOCK * 2))]);
        let z = Compressor::new().unwrap().compress(&big).unwrap();
        assert!(matches!(
            Decompressor::default().decompress(&z),
            Err(HeaderError::TooLarge)
        ));
    }
}
