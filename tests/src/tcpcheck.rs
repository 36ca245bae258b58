//! Byte-stream transparency checks through the mesh: a TCP server (`mesh-app tcp-serve`, run in
//! a destination pod) and a client (`mesh-app tcp-check`, run in a source pod) that agree on a
//! one-line header naming the case, then move a deterministic stream and compare its length
//! and CRC-32 at both ends.
//!
//! Cases (header `<mode> <bytes> [<read rate MiB/s>]\n`):
//! - `upload N`: the client sends N bytes and half-closes; the server reads to EOF and answers
//!   `<count>:<crc>` (so half-close must reach the server while the reverse direction stays
//!   open for the reply).
//! - `download N`: the server sends N bytes and closes; the client reads to EOF and checks the
//!   count and CRC against the pattern.
//! - `slow N R`: like upload, but the server reads at R MiB/s (a slow reader: the sender must be
//!   held back without a byte lost).
//! - `reset 0`: the server writes `ready\n`, waits for `go\n`, then closes with RST
//!   (`SO_LINGER` 0); the client must see the reset as an error, never as a clean end.
//!
//! Plain blocking std sockets and one thread per connection: the point is the mesh, not the tool.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

const CHUNK: usize = 256 * 1024;

/// The deterministic byte stream both ends generate (xorshift64*, restarted per stream).
pub struct Pattern {
    state: u64,
}

impl Default for Pattern {
    fn default() -> Self {
        Pattern {
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

impl Pattern {
    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Length and CRC-32 of everything fed to it.
#[derive(Default)]
pub struct Tally {
    pub count: u64,
    crc: crc32fast::Hasher,
}

impl Tally {
    pub fn update(&mut self, b: &[u8]) {
        self.count += b.len() as u64;
        self.crc.update(b);
    }

    pub fn summary(&self) -> String {
        format!("{}:{:08x}", self.count, self.crc.clone().finalize())
    }
}

/// Tally of the first `n` bytes of the pattern (what a correct download delivers).
pub fn expected(n: u64) -> String {
    send_pattern(&mut io::sink(), n)
        .expect("writing to a sink cannot fail")
        .summary()
}

/// Serves the cases above until killed.
pub fn serve(listen: SocketAddr) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for conn in l.incoming() {
        let Ok(s) = conn else { continue };
        std::thread::spawn(move || {
            let peer = s.peer_addr().ok();
            if let Err(e) = serve_one(s) {
                eprintln!("tcp-serve: connection from {peer:?}: {e:#}");
            }
        });
    }
    Ok(())
}

fn serve_one(s: TcpStream) -> Result<()> {
    let mut r = BufReader::with_capacity(CHUNK, s.try_clone()?);
    let mut header = String::new();
    r.read_line(&mut header)?;
    let words: Vec<&str> = header.split_whitespace().collect();
    let n: u64 = words.get(1).and_then(|w| w.parse().ok()).unwrap_or(0);
    let mut w = s;
    match words.first().copied() {
        Some("upload") => {
            let t = drain(&mut r, None)?;
            w.write_all(format!("{}\n", t.summary()).as_bytes())?;
            w.shutdown(Shutdown::Write)?;
        }
        Some("slow") => {
            let rate: u64 = words.get(2).and_then(|w| w.parse().ok()).unwrap_or(16);
            let t = drain(&mut r, Some(rate * 1024 * 1024))?;
            w.write_all(format!("{}\n", t.summary()).as_bytes())?;
            w.shutdown(Shutdown::Write)?;
        }
        Some("download") => {
            send_pattern(&mut w, n)?;
            w.shutdown(Shutdown::Write)?;
            // Wait for the client's close so our FIN is not turned into a RST by unread input.
            let _ = io::copy(&mut r, &mut io::sink());
        }
        Some("reset") => {
            w.write_all(b"ready\n")?;
            let mut go = String::new();
            r.read_line(&mut go)?;
            // SO_LINGER 0: close() sends RST instead of FIN.
            set_linger_zero(&w)?;
            drop(r);
            drop(w);
        }
        other => bail!("unknown case header {other:?}"),
    }
    Ok(())
}

fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized `linger` value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads to EOF (at `rate` bytes/s at most when given) and tallies what came.
fn drain(r: &mut impl Read, rate: Option<u64>) -> Result<Tally> {
    let mut t = Tally::default();
    let mut buf = vec![0u8; if rate.is_some() { 64 * 1024 } else { CHUNK }];
    let start = Instant::now();
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok(t);
        }
        t.update(&buf[..k]);
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(t.count as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

fn send_pattern(w: &mut impl Write, n: u64) -> Result<Tally> {
    let mut p = Pattern::default();
    let mut t = Tally::default();
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        p.fill(&mut buf[..k]);
        w.write_all(&buf[..k])?;
        t.update(&buf[..k]);
        left -= k as u64;
    }
    Ok(t)
}

/// A blocking reader that, like an event-loop application, treats `EAGAIN` as "wait for
/// readability and read again", and counts how often that happened. On kernel 6.18 a socket
/// in a sockmap returns `EAGAIN` to a blocking reader woken without data (see ebpf/README.md);
/// without the fast path the count must stay 0.
struct Reader<'a> {
    s: &'a TcpStream,
    eagain: u64,
}

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = Instant::now();
        loop {
            match (&mut &*self.s).read(buf) {
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < READ_TIMEOUT =>
                {
                    self.eagain += 1;
                    wait_readable(self.s);
                }
                other => return other,
            }
        }
    }
}

const READ_TIMEOUT: Duration = Duration::from_secs(120);

fn wait_readable(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 1000) };
}

/// Runs one case against `to` and returns what both ends saw, as JSON: `ok` says whether the
/// stream arrived intact (and, for `reset`, whether the reset arrived as an error); `eagain`
/// counts spurious `EAGAIN`s the client's blocking reads got (and retried).
pub fn check(to: SocketAddr, mode: &str, bytes: u64, rate_mib: u64) -> Result<serde_json::Value> {
    let mut v = check_inner(to, mode, bytes, rate_mib)?;
    v["fastpath_env"] = json!(std::env::var("MESH_FASTPATH").unwrap_or_default());
    Ok(v)
}

fn check_inner(to: SocketAddr, mode: &str, bytes: u64, rate_mib: u64) -> Result<serde_json::Value> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))
        .with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.write_all(format!("{mode} {bytes} {rate_mib}\n").as_bytes())?;
    let reader_socket = s.try_clone()?;
    let mut reader = Reader {
        s: &reader_socket,
        eagain: 0,
    };
    let v = match mode {
        "upload" | "slow" => {
            let sent = send_pattern(&mut s, bytes)?;
            let sent_done_ms = start.elapsed().as_millis() as u64;
            s.shutdown(Shutdown::Write)?;
            let mut reply = String::new();
            reader.read_to_string(&mut reply)?;
            let reply = reply.trim().to_string();
            json!({
                "mode": mode, "sent": sent.summary(), "reply": reply, "eagain": reader.eagain,
                "ok": reply == sent.summary(),
                "sent_done_ms": sent_done_ms,
                "elapsed_ms": start.elapsed().as_millis() as u64,
            })
        }
        "download" => {
            let got = drain(&mut reader, None)?;
            let want = expected(bytes);
            json!({
                "mode": mode, "received": got.summary(), "expected": want,
                "eagain": reader.eagain,
                "ok": got.summary() == want,
                "elapsed_ms": start.elapsed().as_millis() as u64,
            })
        }
        "reset" => {
            let mut r = BufReader::new(&mut reader);
            let mut ready = String::new();
            r.read_line(&mut ready)?;
            s.write_all(b"go\n")?;
            let mut rest = Vec::new();
            let outcome = match r.read_to_end(&mut rest) {
                Ok(_) => "eof".to_string(),
                Err(e) => format!("{:?}", e.kind()),
            };
            drop(r);
            json!({
                "mode": mode, "ready": ready.trim(), "outcome": outcome,
                "eagain": reader.eagain,
                "ok": ready.trim() == "ready" && outcome == "ConnectionReset",
                "elapsed_ms": start.elapsed().as_millis() as u64,
            })
        }
        other => bail!("unknown mode {other}; known: upload, download, slow, reset"),
    };
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases over plain loopback: the tool itself must be right before it judges the mesh.
    #[test]
    fn cases_hold_over_plain_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        std::thread::spawn(move || serve(addr));
        std::thread::sleep(Duration::from_millis(100));
        for (mode, n, rate) in [
            ("upload", 3_000_001, 0),
            ("download", 3_000_001, 0),
            ("slow", 1_000_000, 8),
            ("reset", 0, 0),
        ] {
            let v = check(addr, mode, n, rate).unwrap();
            assert_eq!(v["ok"], true, "{v}");
        }
    }

    #[test]
    fn pattern_is_deterministic_and_not_constant() {
        assert_eq!(expected(12345), expected(12345));
        assert_ne!(expected(12345), expected(12346));
        let mut a = [0u8; 64];
        Pattern::default().fill(&mut a);
        assert!(a.iter().any(|&b| b != a[0]));
    }
}
