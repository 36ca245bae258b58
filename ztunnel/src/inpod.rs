//! In-pod sockets: listeners and outgoing connections created inside a pod's network namespace.
//!
//! A [`PodNetns`] owns one thread that entered the pod's netns with `setns`; socket creation
//! runs there (a socket belongs to the netns it was created in), everything else (accept,
//! connect, I/O) runs on the tokio runtime. Without a netns path, sockets are created in
//! ztunnel's own namespace ([`SocketFactory::host`]).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Errors entering a pod's network namespace.
#[derive(Debug, thiserror::Error)]
pub enum InpodError {
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {path} (needs CAP_SYS_ADMIN): {source}")]
    Setns {
        path: String,
        #[source]
        source: nix::Error,
    },
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in a pod's network namespace.
#[derive(Debug)]
pub struct PodNetns {
    path: PathBuf,
    tx: mpsc::Sender<Job>,
}

impl PodNetns {
    /// Spawns the netns thread for `path` (e.g. `/run/netns/pod1`).
    pub fn open(path: &Path) -> Result<Arc<Self>, InpodError> {
        let file = std::fs::File::open(path).map_err(|source| InpodError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let p = path.display().to_string();
        std::thread::Builder::new()
            .name(format!(
                "netns-{}",
                path.file_name()
                    .map(|f| f.to_string_lossy())
                    .unwrap_or_default()
            ))
            .spawn(move || {
                let r = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET);
                let ok = r.is_ok();
                let _ = ready_tx.send(r);
                if !ok {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|source| InpodError::Open {
                path: p.clone(),
                source,
            })?;
        ready_rx
            .recv()
            .unwrap_or(Err(nix::Error::EIO))
            .map_err(|source| InpodError::Setns { path: p, source })?;
        Ok(Arc::new(PodNetns {
            path: path.to_path_buf(),
            tx,
        }))
    }

    /// The netns path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the netns thread and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| io::Error::other("netns thread gone"))?;
        rx.recv().map_err(|_| io::Error::other("netns thread gone"))
    }
}

/// Creates sockets in the right network namespace.
#[derive(Debug, Clone)]
pub enum SocketFactory {
    /// ztunnel's own namespace.
    Host,
    /// A pod's namespace.
    Pod(Arc<PodNetns>),
}

fn new_socket(v4: bool) -> io::Result<socket2::Socket> {
    let domain = if v4 {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    Ok(s)
}

fn listen_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = new_socket(addr.is_ipv4())?;
    s.set_reuse_address(true)?;
    // Binding the pod IP from a namespace that does not own it (tests without netns on
    // loopback aliases are fine; this covers addresses configured later).
    let _ = s.set_freebind(true);
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

impl SocketFactory {
    /// The host factory.
    pub fn host() -> Self {
        SocketFactory::Host
    }

    /// A factory for the pod whose netns is at `path`.
    pub fn pod(path: &Path) -> Result<Self, InpodError> {
        Ok(SocketFactory::Pod(PodNetns::open(path)?))
    }

    /// A listening socket bound to `addr`. Must be called inside the tokio runtime.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let std = match self {
            SocketFactory::Host => listen_std(addr)?,
            SocketFactory::Pod(ns) => ns.run(move || listen_std(addr))??,
        };
        TcpListener::from_std(std)
    }

    /// Connects to `addr` with TCP_NODELAY set.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let v4 = addr.is_ipv4();
        let s = match self {
            SocketFactory::Host => new_socket(v4)?,
            SocketFactory::Pod(ns) => ns.run(move || new_socket(v4))??,
        };
        s.set_nodelay(true)?;
        let sock = TcpSocket::from_std_stream(s.into());
        sock.connect(addr).await
    }
}
