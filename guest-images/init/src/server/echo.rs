//! Byte echo loops for the `echo` and `connect_echo` requests.

use std::io::{self, BufReader, ErrorKind, Read, Write};

const CHUNK: usize = 64 << 10;

/// Writes back every byte read from `stream` until EOF; returns the number of bytes.
pub fn echo<S: Read + Write>(stream: &mut S) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stream.write_all(&buf[..n])?;
        total += n as u64;
    }
    stream.flush()?;
    Ok(total)
}

/// [`echo`] for a connection whose request line came through `reader`: the bytes it
/// already buffered past that line are echoed first.
pub fn echo_rest<S: Read + Write>(reader: BufReader<S>) -> io::Result<u64> {
    let buffered = reader.buffer().to_vec();
    let mut stream = reader.into_inner();
    stream.write_all(&buffered)?;
    Ok(buffered.len() as u64 + echo(&mut stream)?)
}
