//! The wire format of a logger's attach socket, shared by the loggers that serve it (rcd's
//! `cri-logger` and `json-logger`, `rcd::cri::attach::Hub`) and the clients that read it
//! (rcd's CRI Attach, rnerd's attached `run`).
//!
//! A logger listens on `<control dir>/attach.sock` and sends each client what the
//! container writes from the moment the client connects. Frames both ways are
//! `[kind u8][len u32 big-endian][len bytes]`: the logger sends [`ATTACHED`] first, then
//! [`STDOUT`], [`STDERR`] and,
//! before it closes the connection of a client too slow to take the output, an empty
//! [`LOST`]; a client sends [`STDIN`] and an empty [`STDIN_END`]. The logger closes every
//! connection once the container's output has ended (after sending what it had).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STDIN_END: u8 = 3;
/// The logger dropped this client for being too slow: output after this point was not
/// sent (the log file still has it). The connection closes right after.
pub const LOST: u8 = 4;
/// The logger's first frame to each client, sent once the client is registered: what the
/// container writes after it reaches the client. A client that must not miss the first
/// output (an attached `run`, connected before the start) waits for it.
pub const ATTACHED: u8 = 5;

/// The socket's name in a logger's control dir.
pub const SOCKET: &str = "attach.sock";

/// Largest frame a peer may send: bigger lengths mean a broken peer, not data.
pub const MAX_FRAME: usize = 1 << 20;

pub fn encode(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + data.len());
    f.push(kind);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

/// Reads one frame; `None` at a clean end of stream between frames.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..])?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("attach frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    Ok(Some((head[0], data)))
}

/// A path to `name` in `dir` short enough for a unix socket address (108 bytes): through the
/// `/proc/self/fd` link of an open `dir` when the plain path is too long. Keep the returned
/// `File` open while the path is in use.
pub fn socket_path(dir: &Path, name: &str) -> std::io::Result<(PathBuf, Option<File>)> {
    let plain = dir.join(name);
    if plain.as_os_str().len() < 100 {
        return Ok((plain, None));
    }
    // std opens with O_CLOEXEC; a directory opens read-only
    let d = File::open(dir)?;
    let p = PathBuf::from(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()));
    Ok((p, Some(d)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn frames_round_trip_and_bad_lengths() {
        let mut buf = encode(STDOUT, b"hello");
        buf.extend(encode(STDIN_END, b""));
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((STDOUT, b"hello".to_vec()))
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some((STDIN_END, vec![])));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        // cut inside a frame: an error, not a clean end
        let cut = encode(STDERR, b"abc");
        assert!(read_frame(&mut &cut[..6]).is_err());
        let mut huge = vec![STDIN];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let e = read_frame(&mut &huge[..]).unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
    }

    #[test]
    fn long_dirs_get_short_socket_paths() {
        let dir = std::env::temp_dir().join(format!("rcd-proto-attach-{}", std::process::id()));
        let long = dir.join("x".repeat(120));
        std::fs::create_dir_all(&long).unwrap();
        let (p, fd) = socket_path(&long, SOCKET).unwrap();
        assert!(fd.is_some() && p.as_os_str().len() < 108, "{p:?}");
        let l = UnixListener::bind(&p).unwrap();
        assert!(long.join(SOCKET).exists());
        let (p2, _fd2) = socket_path(&long, SOCKET).unwrap();
        let _c = UnixStream::connect(&p2).unwrap();
        l.accept().unwrap();
        let (p, fd) = socket_path(&dir, SOCKET).unwrap();
        assert!(fd.is_none());
        assert_eq!(p, dir.join(SOCKET));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
