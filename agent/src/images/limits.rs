//! Caps on what one image may make vmletd read, hold and write: images come from
//! registries nobody here controls, so every size and count they declare is checked
//! before it is allocated or unpacked.
//!
//! [`TarGuard`] sits between a layer's (decompressed) stream and the `tar` crate, which
//! reads GNU long names and PAX records whole at whatever size their header declares:
//! the guard reads each 512-byte header first and refuses an oversized extension before
//! the `tar` crate sees it, and counts every byte, so a decompression bomb ends at the
//! image's byte cap.

use std::cell::Cell;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// `[images]` limits; the defaults fit real images (the largest public ML images
/// unpack to ~20 GiB and ~500k files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageLimits {
    /// Largest manifest or index accepted from a registry.
    pub max_manifest_bytes: u64,
    /// Largest image config blob.
    pub max_config_bytes: u64,
    /// Largest GNU long name / long link or PAX extension record of one tar entry.
    pub max_tar_header_bytes: u64,
    /// Most bytes all layers of one image may unpack to (tar stream bytes).
    pub max_unpacked_bytes: u64,
    /// Most tar entries in all layers of one image.
    pub max_entries: u64,
    /// Most files, directories, links and nodes the layers of one image may create.
    pub max_inodes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 8 << 20,
            max_tar_header_bytes: 1 << 20,
            max_unpacked_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_inodes: 2_000_000,
        }
    }
}

impl ImageLimits {
    /// Refuses a zero cap (nothing could be pulled).
    pub fn check(&self) -> Result<(), String> {
        for (key, v) in [
            ("max_manifest_bytes", self.max_manifest_bytes),
            ("max_config_bytes", self.max_config_bytes),
            ("max_tar_header_bytes", self.max_tar_header_bytes),
            ("max_unpacked_bytes", self.max_unpacked_bytes),
            ("max_entries", self.max_entries),
            ("max_inodes", self.max_inodes),
        ] {
            if v == 0 {
                return Err(format!("images.{key} must be above 0"));
            }
        }
        Ok(())
    }
}

/// An image went over one of its [`ImageLimits`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} exceeds the limit of {limit} (raise images.{key} if the image is trusted)")]
pub struct LimitExceeded {
    /// What went over, with its size where known.
    pub what: String,
    /// The cap.
    pub limit: u64,
    /// The config key of the cap.
    pub key: &'static str,
}

impl LimitExceeded {
    /// As an I/O error, to travel through readers; see [`LimitExceeded::from_io`].
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The limit error an I/O error carries, if it does.
    pub fn from_io(e: &io::Error) -> Option<LimitExceeded> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<LimitExceeded>())
            .cloned()
    }
}

/// Adds `n` to a per-image counter, failing once it passes `limit`.
pub(super) fn count(
    counter: &Cell<u64>,
    n: u64,
    limit: u64,
    key: &'static str,
    what: &str,
) -> Result<(), LimitExceeded> {
    let total = counter.get().saturating_add(n);
    counter.set(total);
    if total > limit {
        return Err(LimitExceeded {
            what: what.to_owned(),
            limit,
            key,
        });
    }
    Ok(())
}

const BLOCK: u64 = 512;

/// A layer stream checked header by header; see the module doc.
pub(super) struct TarGuard<'a, R> {
    inner: R,
    limits: &'a ImageLimits,
    /// Bytes of the image so far (all layers).
    bytes: &'a Cell<u64>,
    header: [u8; BLOCK as usize],
    /// Served and filled bytes of `header`.
    header_pos: usize,
    header_len: usize,
    /// Bytes of the current entry's data, then of its padding, still to pass.
    data_left: u64,
    pad_left: u64,
    /// The body of a PAX `x` record being passed (bounded by `max_tar_header_bytes`):
    /// its `size` overrides the next entry's header, as the `tar` crate reads it.
    pax: Option<Vec<u8>>,
    next_size: Option<u64>,
}

impl<'a, R: Read> TarGuard<'a, R> {
    pub(super) fn new(inner: R, limits: &'a ImageLimits, bytes: &'a Cell<u64>) -> Self {
        TarGuard {
            inner,
            limits,
            bytes,
            header: [0; BLOCK as usize],
            header_pos: 0,
            header_len: 0,
            data_left: 0,
            pad_left: 0,
            pax: None,
            next_size: None,
        }
    }

    fn count(&self, n: usize) -> io::Result<()> {
        count(
            self.bytes,
            n as u64,
            self.limits.max_unpacked_bytes,
            "max_unpacked_bytes",
            "the image's unpacked size",
        )
        .map_err(LimitExceeded::into_io)
    }

    /// Reads the next header whole (or what is left of the stream) and checks it.
    fn next_header(&mut self) -> io::Result<()> {
        let mut filled = 0;
        while filled < self.header.len() {
            match self.inner.read(&mut self.header[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.count(filled)?;
        self.header_pos = 0;
        self.header_len = filled;
        if filled == self.header.len() && self.header.iter().any(|b| *b != 0) {
            self.check_header()?;
        }
        Ok(())
    }

    fn check_header(&mut self) -> io::Result<()> {
        let h = tar::Header::from_byte_slice(&self.header);
        let kind = h.entry_type();
        let declared = h.entry_size()?;
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        let size = if extension {
            if declared > self.limits.max_tar_header_bytes {
                return Err(LimitExceeded {
                    what: format!("a tar {kind:?} record of {declared} bytes"),
                    limit: self.limits.max_tar_header_bytes,
                    key: "max_tar_header_bytes",
                }
                .into_io());
            }
            if kind.is_pax_local_extensions() {
                self.pax = Some(Vec::with_capacity(declared as usize));
            }
            declared
        } else {
            if kind.is_gnu_sparse() {
                // Its extension blocks would shift the stream under this guard; an image
                // layer has no use for sparse entries (and unpacking refuses them).
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "GNU sparse entries are not supported in image layers",
                ));
            }
            self.next_size.take().unwrap_or(declared)
        };
        self.data_left = size;
        self.pad_left = (BLOCK - size % BLOCK) % BLOCK;
        Ok(())
    }

    /// A PAX record has passed whole: remember the size it gives the next entry.
    fn end_of_pax(&mut self) {
        if let Some(body) = self.pax.take() {
            self.next_size = tar::PaxExtensions::new(&body)
                .map_while(Result::ok)
                .find(|e| e.key() == Ok("size"))
                .and_then(|e| e.value().ok()?.parse::<u64>().ok());
        }
    }
}

impl<R: Read> Read for TarGuard<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.header_pos == self.header_len && self.data_left == 0 && self.pad_left == 0 {
            self.next_header()?;
        }
        if self.header_pos < self.header_len {
            let n = (self.header_len - self.header_pos).min(out.len());
            out[..n].copy_from_slice(&self.header[self.header_pos..self.header_pos + n]);
            self.header_pos += n;
            return Ok(n);
        }
        let in_data = self.data_left > 0;
        let left = if in_data {
            self.data_left
        } else {
            self.pad_left
        };
        let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut out[..want])?;
        self.count(n)?;
        if in_data {
            self.data_left -= n as u64;
            if let Some(body) = self.pax.as_mut() {
                body.extend_from_slice(&out[..n]);
            }
            if self.data_left == 0 {
                self.end_of_pax();
            }
        } else {
            self.pad_left -= n as u64;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ImageLimits {
        ImageLimits {
            max_tar_header_bytes: 4096,
            max_unpacked_bytes: 1 << 20,
            ..ImageLimits::default()
        }
    }

    fn archive(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    /// Everything the `tar` crate reads through the guard, as (path, data) pairs.
    fn read_all(data: &[u8], limits: &ImageLimits) -> io::Result<Vec<(String, Vec<u8>)>> {
        let bytes = Cell::new(0);
        let mut a = tar::Archive::new(TarGuard::new(data, limits, &bytes));
        let mut out = Vec::new();
        for e in a.entries()? {
            let mut e = e?;
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mut body = Vec::new();
            e.read_to_end(&mut body)?;
            out.push((path, body));
        }
        Ok(out)
    }

    #[test]
    fn ordinary_archives_pass_unchanged() {
        let long = format!("dir/{}", "n".repeat(300));
        let data = archive(|b| {
            file(b, "a", b"hello");
            file(b, &long, &[7u8; 1000]);
            file(b, "empty", b"");
        });
        let got = read_all(&data, &limits()).unwrap();
        assert_eq!(
            got,
            vec![
                ("a".to_owned(), b"hello".to_vec()),
                (long, vec![7u8; 1000]),
                ("empty".to_owned(), vec![]),
            ]
        );
    }

    #[test]
    fn pax_size_overrides_are_followed() {
        // A PAX record whose `size` overrides the (smaller) ustar header size: the guard
        // must stay in step with the tar crate, which honours it.
        let data = archive(|b| {
            b.append_pax_extensions([("size", b"600".as_slice())])
                .unwrap();
            let mut h = tar::Header::new_ustar();
            h.set_path("big").unwrap();
            h.set_size(0);
            h.set_mode(0o644);
            h.set_cksum();
            b.get_mut().extend_from_slice(h.as_bytes());
            b.get_mut().extend_from_slice(&[9u8; 1024]);
            file(b, "after", b"x");
        });
        let got = read_all(&data, &limits()).unwrap();
        assert_eq!(got[0], ("big".to_owned(), vec![9u8; 600]));
        assert_eq!(got[1], ("after".to_owned(), b"x".to_vec()));
    }

    #[test]
    fn oversized_long_names_are_refused_before_they_are_read() {
        let name = "n".repeat(5000);
        let data = archive(|b| file(b, &name, b"x"));
        let e = read_all(&data, &limits()).unwrap_err();
        let limit = LimitExceeded::from_io(&e).expect("a limit error");
        assert_eq!(limit.key, "max_tar_header_bytes");
    }

    #[test]
    fn the_byte_cap_stops_a_stream() {
        let data = archive(|b| file(b, "big", &vec![0u8; 2 << 20]));
        let e = read_all(&data, &limits()).unwrap_err();
        assert_eq!(
            LimitExceeded::from_io(&e).unwrap().key,
            "max_unpacked_bytes"
        );
    }

    #[test]
    fn sparse_entries_are_refused() {
        let mut h = tar::Header::new_gnu();
        h.set_path("s").unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(0);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(&[0u8; 1024]);
        let e = read_all(&data, &limits()).unwrap_err();
        assert!(e.to_string().contains("sparse"), "{e}");
    }
}
