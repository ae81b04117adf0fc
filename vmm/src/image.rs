//! Boot images (kernel, initramfs) that reach guest memory by mapping, not copying.
//!
//! linux-loader reads each ELF segment with one `read_volatile` into the guest
//! memory slice where it belongs. [`MappedImage`] serves such reads by mapping the
//! file's pages there copy-on-write (`MAP_PRIVATE | MAP_FIXED`) when file offset,
//! host address and length are page aligned, and copies only the unaligned rest.
//! A boot then costs no copy, and every VM booted from the same file shares the
//! page-cache pages its guest never writes (most of the kernel text).
//!
//! The files must be replaced by rename, never rewritten in place, while VMs use
//! them: a private mapping still shows the file's later changes to pages the guest
//! has not written.
//!
//! Guest RAM in a shared memfd (virtio-fs, see `vstate::memory`) is never mapped
//! over: `MAP_FIXED` would replace those pages in the VMM's (and so KVM's) view
//! only, while a vhost-user backend maps the memfd itself and would see other
//! pages there. Once the guest reuses that memory (the initramfs is freed right
//! after boot) and hands it to the device as a buffer, the backend would read and
//! write memory the guest never sees. So in that mode the image is copied into the
//! memfd ([`MappedImage::copying`]), which costs one copy per boot and the page
//! cache sharing between VMs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

const PAGE: u64 = 4096;

/// A file read into guest memory by mapping where it can.
pub struct MappedImage {
    file: File,
    len: u64,
    pos: u64,
    mapped_bytes: u64,
    /// Whether aligned pages may be mapped (false: always copy).
    map_pages: bool,
}

impl MappedImage {
    /// Wraps an open image file, to be mapped where it can.
    pub fn new(file: File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(MappedImage {
            file,
            len,
            pos: 0,
            mapped_bytes: 0,
            map_pages: true,
        })
    }

    /// Wraps an open image file, to be copied only (for guest RAM in shared memory).
    pub fn copying(file: File) -> std::io::Result<Self> {
        Ok(MappedImage {
            map_pages: false,
            ..Self::new(file)?
        })
    }

    /// Size of the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes placed by mapping so far (the rest was copied).
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes
    }

    /// Maps `[pos, pos + len)` of the file at `dst`; returns false if it cannot.
    fn map_at(&mut self, dst: *mut u8, len: u64) -> bool {
        // SAFETY: `dst..dst + len` lies inside a guest memory mapping this process
        // owns (it comes from a VolatileSlice of that mapping); MAP_FIXED replaces
        // those pages with a private mapping of the same size and protection, so
        // every pointer into guest memory stays valid. No vCPU runs yet.
        let p = unsafe {
            libc::mmap(
                dst.cast(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                self.file.as_raw_fd(),
                self.pos as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED || p != dst.cast() {
            tracing::debug!(
                "mapping the boot image failed ({}); copying",
                std::io::Error::last_os_error()
            );
            return false;
        }
        true
    }
}

impl Read for MappedImage {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for MappedImage {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| std::io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

impl ReadVolatile for MappedImage {
    /// Fills as much of `buf` as the file allows in one call (vm-memory treats a
    /// short read of a region as an error): whole pages by mapping, the rest by
    /// copying.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard_mut();
        let dst = guard.as_ptr();
        let want = buf.len() as u64;
        let mut done = 0u64;
        let mappable = want.min(self.len.saturating_sub(self.pos)) & !(PAGE - 1);
        if self.map_pages
            && mappable > 0
            && self.pos.is_multiple_of(PAGE)
            && (dst as u64).is_multiple_of(PAGE)
            && self.map_at(dst, mappable)
        {
            self.pos += mappable;
            self.mapped_bytes += mappable;
            done = mappable;
        }
        while done < want {
            let n = ((want - done) as usize).min(1 << 20);
            // SAFETY: `dst` is valid for `buf.len()` writable bytes (the slice's
            // guarantee) and `done + n <= buf.len()`.
            let r = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    dst.add(done as usize).cast(),
                    n,
                    self.pos as libc::off_t,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(VolatileMemoryError::IOError(e));
            }
            if r == 0 {
                break;
            }
            self.pos += r as u64;
            done += r as u64;
        }
        Ok(done as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    #[test]
    fn aligned_pages_are_mapped_and_the_tail_copied() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 253) as u8).collect();
        std::fs::write(f.path(), &content).unwrap();
        let mut img = MappedImage::new(File::open(f.path()).unwrap()).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x10000), &mut img, content.len())
            .unwrap();
        assert_eq!(img.mapped_bytes(), 3 * 4096);
        let mut back = vec![0u8; content.len()];
        mem.read_slice(&mut back, GuestAddress(0x10000)).unwrap();
        assert_eq!(back, content);
        // Guest writes stay private: the file is untouched.
        mem.write_slice(&[0xff; 16], GuestAddress(0x10000)).unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), content);
        // Memory around the image is still ordinary zeroed RAM.
        let mut around = [1u8; 8];
        mem.read_slice(&mut around, GuestAddress(0x10000 - 8))
            .unwrap();
        assert_eq!(around, [0; 8]);
    }

    #[test]
    fn shared_memory_gets_a_copy_its_file_sees() {
        let mem = crate::vstate::memory::create(
            64 << 20,
            crate::vstate::memory::MemoryMode::Shared,
            false,
        )
        .unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(f.path(), &content).unwrap();
        let mut img = MappedImage::copying(File::open(f.path()).unwrap()).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x10000), &mut img, content.len())
            .unwrap();
        assert_eq!(img.mapped_bytes(), 0);
        // A backend mapping the memfd sees the image, and the guest's later writes.
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let region = mem.iter().next().unwrap();
        let memfd = region.file_offset().unwrap().file();
        let mut back = vec![0u8; content.len()];
        std::os::unix::fs::FileExt::read_exact_at(memfd, &mut back, 0x10000).unwrap();
        assert_eq!(back, content);
        mem.write_slice(&[0xff; 16], GuestAddress(0x10000)).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(memfd, &mut back[..16], 0x10000).unwrap();
        assert_eq!(back[..16], [0xff; 16]);
        assert_eq!(std::fs::read(f.path()).unwrap(), content);
    }

    #[test]
    fn unaligned_reads_are_copied() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..2 * 4096).map(|i| (i % 7) as u8).collect();
        std::fs::write(f.path(), &content).unwrap();
        let mut img = MappedImage::new(File::open(f.path()).unwrap()).unwrap();
        img.seek(SeekFrom::Start(10)).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x2000), &mut img, 8000)
            .unwrap();
        assert_eq!(img.mapped_bytes(), 0);
        let mut back = vec![0u8; 8000];
        mem.read_slice(&mut back, GuestAddress(0x2000)).unwrap();
        assert_eq!(back, content[10..8010]);
    }
}
