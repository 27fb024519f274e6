//! Zero-downtime upgrades: a gateway hands its listening sockets to its successor over a
//! Unix socket (`SCM_RIGHTS`), as pingora's graceful upgrade and Envoy's hot restart do.
//!
//! The running gateway listens on `--upgrade-socket PATH` (a `SOCK_SEQPACKET` socket,
//! mode 0600). A successor started with `--upgrade` connects and the exchange is:
//!
//! 1. old -> new: `sockets` messages, each a JSON description of the sockets it carries
//!    (what each is for, and the configured address) with their descriptors attached;
//!    the last one says `"more": false`.
//! 2. new: builds its listeners from them (binding nothing it was given, accepting on
//!    nothing yet), applies its configuration, then -> old: `serving`.
//! 3. old: stops accepting (its copies of the sockets close, the new one's stay open, so
//!    no accept queue is lost), -> new: `released`.
//! 4. new: starts accepting (connections that came in between waited in the queues),
//!    tells systemd it is the main process, and closes the connection; old: seeing it
//!    closed, drains and exits.
//! 5. new: takes PATH over, so it can be upgraded in turn.
//!
//! Either side may send `error` instead. A successor that fails before `serving` (no
//! peer, a bad configuration, a protocol error) exits and the old one keeps serving. An
//! old gateway that waited too long for `serving` gives the successor up: it sends
//! `error` ("abandoned") and closes the connection, and keeps serving; a successor that
//! then sends `serving` gets that error, or sees the connection closed, and exits without
//! ever having accepted. Only `released` lets a successor accept, and the old one sends
//! it only after it stopped accepting: the two never serve at once.
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The protocol version both sides must speak.
pub const PROTOCOL_VERSION: u32 = 1;
/// Descriptors per message (the kernel's limit, SCM_MAX_FD, is 253).
const FDS_PER_MESSAGE: usize = 200;
/// The largest message either side sends.
const MAX_MESSAGE: usize = 64 * 1024;
/// How long the old gateway waits for a successor to say it serves (an xDS first sync
/// may take long) before it gives that successor up.
pub const SERVING_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the old gateway waits, once released, for the successor to close the
/// connection (after telling systemd it is the main process) before it drains.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a handed-over socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketKind {
    /// One worker's `SO_REUSEPORT` socket of the listener configured at the address.
    Listener,
    Admin,
    Health,
    Prometheus,
    /// The rate-limit service's socket (`--ratelimit-redis`).
    RateLimit,
}

/// One handed-over socket: what it is for and the address it was configured with.
#[derive(Debug)]
pub struct HandedSocket {
    pub kind: SocketKind,
    pub addr: SocketAddr,
    pub socket: TcpListener,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SocketEntry {
    kind: SocketKind,
    addr: SocketAddr,
}

/// The messages of the exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Message {
    Sockets {
        version: u32,
        sockets: Vec<SocketEntry>,
        more: bool,
    },
    Serving {
        pid: u32,
    },
    Released,
    Error {
        message: String,
    },
}

/// Why a hand-off failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("{path}: no gateway to take over there: {error}")]
    NoPeer {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("upgrade socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("upgrade protocol: {0}")]
    Protocol(String),
    #[error("the other gateway refused: {0}")]
    Refused(String),
}

impl From<nix::Error> for HandoffError {
    fn from(e: nix::Error) -> Self {
        HandoffError::Io(std::io::Error::from(e))
    }
}

fn send(conn: &UnixStream, msg: &Message, fds: &[RawFd]) -> Result<(), HandoffError> {
    let bytes = serde_json::to_vec(msg).map_err(|e| HandoffError::Protocol(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(HandoffError::Protocol(format!(
            "message of {} bytes is over {MAX_MESSAGE}",
            bytes.len()
        )));
    }
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let n = sendmsg::<()>(conn.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if n != bytes.len() {
        return Err(HandoffError::Protocol("message sent in part".into()));
    }
    Ok(())
}

/// Receives one message and the descriptors that came with it (owned: closed on drop).
fn recv(conn: &UnixStream) -> Result<(Message, Vec<OwnedFd>), HandoffError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
    let (n, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel installed these descriptors in this process for
                    // this message; nothing else owns them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, fds, truncated)
    };
    if truncated {
        return Err(HandoffError::Protocol("message truncated".into()));
    }
    if n == 0 {
        return Err(HandoffError::Protocol(
            "the other gateway closed the connection".into(),
        ));
    }
    let msg: Message = serde_json::from_slice(&buf[..n])
        .map_err(|e| HandoffError::Protocol(format!("bad message: {e}")))?;
    if let Message::Error { message } = &msg {
        return Err(HandoffError::Refused(message.clone()));
    }
    Ok((msg, fds))
}

/// Sends every socket, in batches the kernel accepts.
fn send_sockets(conn: &UnixStream, sockets: &[HandedSocket]) -> Result<(), HandoffError> {
    let chunks: Vec<&[HandedSocket]> = if sockets.is_empty() {
        vec![&[]]
    } else {
        sockets.chunks(FDS_PER_MESSAGE).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let entries = chunk
            .iter()
            .map(|s| SocketEntry {
                kind: s.kind,
                addr: s.addr,
            })
            .collect();
        let fds: Vec<RawFd> = chunk.iter().map(|s| s.socket.as_raw_fd()).collect();
        send(
            conn,
            &Message::Sockets {
                version: PROTOCOL_VERSION,
                sockets: entries,
                more: i != last,
            },
            &fds,
        )?;
    }
    Ok(())
}

/// Receives every socket the old gateway sends.
fn recv_sockets(conn: &UnixStream) -> Result<Vec<HandedSocket>, HandoffError> {
    let mut out = Vec::new();
    loop {
        let (msg, fds) = recv(conn)?;
        let Message::Sockets {
            version,
            sockets,
            more,
        } = msg
        else {
            return Err(HandoffError::Protocol(format!(
                "expected the sockets, got {msg:?}"
            )));
        };
        if version != PROTOCOL_VERSION {
            return Err(HandoffError::Protocol(format!(
                "the running gateway speaks version {version}, this one {PROTOCOL_VERSION}"
            )));
        }
        if fds.len() != sockets.len() {
            return Err(HandoffError::Protocol(format!(
                "{} sockets described, {} received",
                sockets.len(),
                fds.len()
            )));
        }
        for (entry, fd) in sockets.into_iter().zip(fds) {
            let socket = TcpListener::from(fd);
            socket.set_nonblocking(true)?;
            out.push(HandedSocket {
                kind: entry.kind,
                addr: entry.addr,
                socket,
            });
        }
        if !more {
            return Ok(out);
        }
    }
}

fn seqpacket() -> Result<OwnedFd, HandoffError> {
    Ok(nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// The running gateway this one takes over from (the successor's side).
pub struct Predecessor {
    conn: UnixStream,
}

impl Predecessor {
    /// Connects to the gateway listening on `path` and receives its sockets.
    pub fn connect(path: &Path) -> Result<(Predecessor, Inherited), HandoffError> {
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path)?;
        if let Err(e) = nix::sys::socket::connect(fd.as_raw_fd(), &addr) {
            return Err(HandoffError::NoPeer {
                path: path.to_path_buf(),
                error: e.into(),
            });
        }
        let conn = UnixStream::from(fd);
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let sockets = recv_sockets(&conn)?;
        Ok((Predecessor { conn }, Inherited::new(sockets)))
    }

    /// Tells the old gateway this one is ready to serve, and waits until it has stopped
    /// accepting: only then may this one accept. An error (the old one gave this one up,
    /// closed the connection, or did not answer within `timeout`) means this gateway must
    /// not serve: it exits, and the old one serves on. Once this returns `Ok`, the caller
    /// drops the `Predecessor` (closing the connection) when it has told systemd it is the
    /// main process: the old gateway drains only then.
    pub fn serving(&self, timeout: Duration) -> Result<(), HandoffError> {
        let said = send(
            &self.conn,
            &Message::Serving {
                pid: std::process::id(),
            },
            &[],
        );
        if let Err(e) = said {
            // The old gateway may have given up and closed: what it said last, if
            // anything, is the reason.
            self.conn
                .set_read_timeout(Some(Duration::from_millis(100)))?;
            return Err(match recv(&self.conn) {
                Err(refused @ HandoffError::Refused(_)) => refused,
                _ => e,
            });
        }
        self.conn.set_read_timeout(Some(timeout))?;
        match recv(&self.conn)? {
            (Message::Released, _) => Ok(()),
            (other, _) => Err(HandoffError::Protocol(format!(
                "expected released, got {other:?}"
            ))),
        }
    }

    /// Tells the old gateway this one gives up (it keeps serving).
    pub fn fail(self, why: &str) {
        let _ = send(
            &self.conn,
            &Message::Error {
                message: why.to_string(),
            },
            &[],
        );
    }
}

/// Sockets received from the old gateway and not yet used.
#[derive(Debug, Default)]
pub struct Inherited {
    listeners: HashMap<SocketAddr, Vec<TcpListener>>,
    servers: HashMap<SocketKind, (SocketAddr, TcpListener)>,
}

impl Inherited {
    pub fn new(sockets: Vec<HandedSocket>) -> Inherited {
        let mut out = Inherited::default();
        for s in sockets {
            match s.kind {
                SocketKind::Listener => out.listeners.entry(s.addr).or_default().push(s.socket),
                kind => {
                    out.servers.insert(kind, (s.addr, s.socket));
                }
            }
        }
        out
    }

    /// Every socket of the listener configured at `addr`.
    pub fn take_listener(&mut self, addr: SocketAddr) -> Option<Vec<TcpListener>> {
        self.listeners.remove(&addr)
    }

    /// The admin, health, Prometheus or rate-limit socket, if it was configured at `addr`.
    pub fn take_server(&mut self, kind: SocketKind, addr: SocketAddr) -> Option<TcpListener> {
        match self.servers.get(&kind) {
            Some((a, _)) if *a == addr => self.servers.remove(&kind).map(|(_, s)| s),
            _ => None,
        }
    }

    /// How many sockets are still unused.
    pub fn len(&self) -> usize {
        self.listeners.values().map(Vec::len).sum::<usize>() + self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the running gateway's upgrade socket does when a successor says it serves.
pub trait HandOver: Send + 'static {
    /// Duplicates of every listening socket, with what each is for.
    fn sockets(&self) -> std::io::Result<Vec<HandedSocket>>;
    /// Stops accepting (the successor holds the sockets now) and starts draining.
    fn stop_accepting(&self);
}

/// The running gateway's upgrade socket.
pub struct UpgradeListener {
    listener: UnixListener,
    path: PathBuf,
    serving_timeout: Duration,
}

impl UpgradeListener {
    /// Listens on `path` (mode 0600; its directory must exist). With `replace`, a
    /// socket already there is replaced (a successor taking over from the gateway that
    /// listened there); without it, one a live gateway answers on is an error.
    pub fn bind(path: &Path, replace: bool) -> Result<UpgradeListener, HandoffError> {
        if !replace && let Ok(fd) = seqpacket() {
            let addr = UnixAddr::new(path)?;
            if nix::sys::socket::connect(fd.as_raw_fd(), &addr).is_ok() {
                return Err(HandoffError::Protocol(format!(
                    "{}: another gateway listens there (start this one with --upgrade to take over)",
                    path.display()
                )));
            }
        }
        // Bound under a temporary name, made private, then renamed into place: the path
        // never names a socket others may connect to, nor nothing while one is replaced.
        let file = path.file_name().ok_or_else(|| {
            HandoffError::Protocol(format!("{}: not a file path", path.display()))
        })?;
        let mut tmp_name = file.to_os_string();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let fd = seqpacket()?;
        nix::sys::socket::bind(fd.as_raw_fd(), &UnixAddr::new(&tmp)?)?;
        let placed = (|| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(8)?)?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(HandoffError::Io(e));
        }
        Ok(UpgradeListener {
            listener: UnixListener::from(fd),
            path: path.to_path_buf(),
            serving_timeout: SERVING_TIMEOUT,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long a successor may take to say it serves before it is given up (default
    /// [`SERVING_TIMEOUT`]).
    pub fn with_serving_timeout(mut self, timeout: Duration) -> UpgradeListener {
        self.serving_timeout = timeout;
        self
    }

    /// Serves successors on a thread of its own, one at a time, until one takes over;
    /// then `on_handed_over` runs (after the successor was told) and the thread ends.
    pub fn serve(
        self,
        gateway: impl HandOver,
        on_handed_over: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("meshgate-upgrade".into())
            .spawn(move || {
                for conn in self.listener.incoming() {
                    let conn = match conn {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "upgrade socket: accept failed");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    match hand_over(&conn, &gateway, self.serving_timeout) {
                        Ok(pid) => {
                            tracing::info!(successor = pid, "the successor serves; this gateway stops accepting and drains");
                            // The path is the successor's now: it is left as it is.
                            on_handed_over();
                            return;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "upgrade failed; this gateway keeps serving");
                        }
                    }
                }
            })
    }
}

/// One successor's exchange, old side: sockets out, wait for `serving` (at most
/// `serving_timeout`, then the successor is told it is abandoned), stop accepting,
/// `released`, wait for the successor to close. Returns the successor's pid.
fn hand_over(
    conn: &UnixStream,
    gateway: &impl HandOver,
    serving_timeout: Duration,
) -> Result<u32, HandoffError> {
    let sockets = match gateway.sockets() {
        Ok(s) => s,
        Err(e) => {
            let _ = send(
                conn,
                &Message::Error {
                    message: format!("duplicating the listening sockets: {e}"),
                },
                &[],
            );
            return Err(e.into());
        }
    };
    tracing::info!(
        sockets = sockets.len(),
        "a successor connected; handing the listening sockets over"
    );
    send_sockets(conn, &sockets)?;
    // Ours stay open until we stop accepting; the successor has its own copies now.
    drop(sockets);
    // A successor may take long to apply its configuration (an xDS first sync): it is
    // waited for up to `serving_timeout`, then given up. Whatever ends the wait other
    // than `serving`, the successor is told (if it still listens) and this gateway
    // serves on: the successor, never released, never accepts.
    conn.set_read_timeout(Some(serving_timeout))?;
    let pid = match recv(conn) {
        Ok((Message::Serving { pid }, _)) => pid,
        Ok((other, _)) => {
            abandon(conn, &format!("expected serving, got {other:?}"));
            return Err(HandoffError::Protocol(format!(
                "expected serving, got {other:?}"
            )));
        }
        Err(HandoffError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            let why =
                format!("the successor did not serve within {serving_timeout:?}; it is abandoned");
            abandon(conn, &why);
            return Err(HandoffError::Protocol(why));
        }
        Err(e) => {
            abandon(conn, &e.to_string());
            return Err(e);
        }
    };
    gateway.stop_accepting();
    // If the successor is gone already nobody accepts until systemd (or whoever ran
    // it) starts a gateway again; there is nothing this one can undo.
    if let Err(e) = send(conn, &Message::Released, &[]) {
        tracing::error!(error = %e, "telling the successor the sockets are released");
        return Ok(pid);
    }
    // The successor closes the connection once it accepts and has told systemd it is
    // the main process: this gateway drains (and exits) only after that.
    conn.set_read_timeout(Some(CLOSE_TIMEOUT))?;
    match recv(conn) {
        Err(HandoffError::Protocol(_)) => {}
        Ok((other, _)) => {
            tracing::warn!(message = ?other, "unexpected message from the successor after released")
        }
        Err(e) => {
            tracing::warn!(error = %e, "waiting for the successor to close the upgrade connection")
        }
    }
    Ok(pid)
}

/// Gives a successor up: tells it (it exits without serving) and closes the connection.
fn abandon(conn: &UnixStream, why: &str) {
    let _ = send(
        conn,
        &Message::Error {
            message: format!("abandoned: {why}"),
        },
        &[],
    );
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// Sends a state to systemd's `$NOTIFY_SOCKET`, if set (sd_notify(3)); errors are logged.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = ?path, "notifying systemd");
    }
}

/// How this process was started, for the successor that SIGUSR2 starts: the executable's
/// path (resolved now, so a binary replaced on disk later is the one the successor runs)
/// and the arguments.
#[derive(Debug, Clone)]
pub struct Relaunch {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
}

impl Relaunch {
    /// This process's executable and arguments, with `--upgrade` added once.
    pub fn current() -> std::io::Result<Relaunch> {
        let exe = std::env::current_exe()?;
        let args = std::env::args_os().skip(1).collect();
        Ok(Relaunch::new(exe, args))
    }

    pub fn new(exe: PathBuf, args: Vec<std::ffi::OsString>) -> Relaunch {
        let mut args: Vec<_> = args.into_iter().filter(|a| a != "--upgrade").collect();
        args.push("--upgrade".into());
        Relaunch { exe, args }
    }

    pub fn args(&self) -> &[std::ffi::OsString] {
        &self.args
    }

    /// Starts the successor (same stdout and stderr); a thread reaps it and logs how it
    /// ended if it fails.
    pub fn spawn(&self) -> std::io::Result<u32> {
        let mut child = std::process::Command::new(&self.exe)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .spawn()?;
        let pid = child.id();
        std::thread::Builder::new()
            .name("meshgate-successor".into())
            .spawn(move || match child.wait() {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    tracing::error!(successor = pid, status = %s, "the successor failed; this gateway keeps serving")
                }
                Err(e) => tracing::warn!(successor = pid, error = %e, "waiting for the successor"),
            })?;
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        (UnixStream::from(a), UnixStream::from(b))
    }

    fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn messages_have_a_stable_json_form() {
        let m = Message::Sockets {
            version: 1,
            sockets: vec![SocketEntry {
                kind: SocketKind::Health,
                addr: "0.0.0.0:15021".parse().unwrap(),
            }],
            more: false,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"type":"sockets","version":1,"sockets":[{"kind":"health","addr":"0.0.0.0:15021"}],"more":false}"#
        );
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
        assert_eq!(
            serde_json::to_string(&Message::Serving { pid: 7 }).unwrap(),
            r#"{"type":"serving","pid":7}"#
        );
        assert_eq!(
            serde_json::to_string(&Message::Released).unwrap(),
            r#"{"type":"released"}"#
        );
    }

    #[test]
    fn sockets_cross_with_what_they_are_for() {
        let (a, b) = pair();
        let l1 = listener();
        let h = listener();
        let addr1 = l1.local_addr().unwrap();
        let sent = vec![
            HandedSocket {
                kind: SocketKind::Listener,
                addr: "0.0.0.0:8080".parse().unwrap(),
                socket: l1,
            },
            HandedSocket {
                kind: SocketKind::Health,
                addr: "0.0.0.0:15021".parse().unwrap(),
                socket: h,
            },
        ];
        send_sockets(&a, &sent).unwrap();
        drop(sent);
        let got = recv_sockets(&b).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kind, SocketKind::Listener);
        assert_eq!(got[0].addr, "0.0.0.0:8080".parse::<SocketAddr>().unwrap());
        // The very socket: same bound address, still listening after the sender closed it.
        assert_eq!(got[0].socket.local_addr().unwrap(), addr1);
        let mut c = std::net::TcpStream::connect(addr1).unwrap();
        got[0].socket.set_nonblocking(false).unwrap();
        let (_, _) = got[0].socket.accept().unwrap();
        use std::io::Write as _;
        c.write_all(b"x").unwrap();
        assert_eq!(got[1].kind, SocketKind::Health);
    }

    #[test]
    fn many_sockets_go_in_batches() {
        let (a, b) = pair();
        let n = FDS_PER_MESSAGE * 2 + 3;
        let base = listener();
        let sent: Vec<HandedSocket> = (0..n)
            .map(|i| HandedSocket {
                kind: SocketKind::Listener,
                addr: SocketAddr::from(([0, 0, 0, 0], 9000 + (i % 7) as u16)),
                socket: base.try_clone().unwrap(),
            })
            .collect();
        let writer = std::thread::spawn(move || send_sockets(&a, &sent).map(|_| a));
        let got = recv_sockets(&b).unwrap();
        let _a = writer.join().unwrap().unwrap();
        assert_eq!(got.len(), n);
        let inherited = Inherited::new(got);
        assert_eq!(inherited.len(), n);
    }

    #[test]
    fn no_sockets_is_one_empty_message() {
        let (a, b) = pair();
        send_sockets(&a, &[]).unwrap();
        assert!(recv_sockets(&b).unwrap().is_empty());
    }

    #[test]
    fn a_described_socket_that_did_not_come_is_an_error() {
        let (a, b) = pair();
        let m = Message::Sockets {
            version: PROTOCOL_VERSION,
            sockets: vec![SocketEntry {
                kind: SocketKind::Admin,
                addr: "127.0.0.1:15000".parse().unwrap(),
            }],
            more: false,
        };
        send(&a, &m, &[]).unwrap();
        let e = recv_sockets(&b).unwrap_err().to_string();
        assert!(e.contains("1 sockets described, 0 received"), "{e}");
    }

    #[test]
    fn another_version_garbage_and_errors_are_refused() {
        let (a, b) = pair();
        send(
            &a,
            &Message::Sockets {
                version: PROTOCOL_VERSION + 1,
                sockets: vec![],
                more: false,
            },
            &[],
        )
        .unwrap();
        let e = recv_sockets(&b).unwrap_err().to_string();
        assert!(e.contains("speaks version 2"), "{e}");

        nix::unistd::write(&a, b"not json").unwrap();
        let e = recv(&b).unwrap_err().to_string();
        assert!(e.contains("bad message"), "{e}");

        send(
            &a,
            &Message::Error {
                message: "nope".into(),
            },
            &[],
        )
        .unwrap();
        assert!(matches!(recv(&b), Err(HandoffError::Refused(m)) if m == "nope"));

        send(&a, &Message::Released, &[]).unwrap();
        let e = recv_sockets(&b).unwrap_err().to_string();
        assert!(e.contains("expected the sockets"), "{e}");

        drop(a);
        let e = recv(&b).unwrap_err().to_string();
        assert!(e.contains("closed the connection"), "{e}");
    }

    struct Fake {
        socket: TcpListener,
        stopped: std::sync::mpsc::Sender<()>,
    }
    impl HandOver for Fake {
        fn sockets(&self) -> std::io::Result<Vec<HandedSocket>> {
            Ok(vec![HandedSocket {
                kind: SocketKind::Listener,
                addr: self.socket.local_addr()?,
                socket: self.socket.try_clone()?,
            }])
        }
        fn stop_accepting(&self) {
            let _ = self.stopped.send(());
        }
    }

    #[test]
    fn the_whole_exchange_over_a_path_and_a_failed_successor_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        assert!(matches!(
            Predecessor::connect(&path),
            Err(HandoffError::NoPeer { .. })
        ));
        let up = UpgradeListener::bind(&path, false).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second gateway without --upgrade may not take the path.
        assert!(UpgradeListener::bind(&path, false).is_err());
        let socket = listener();
        let addr = socket.local_addr().unwrap();
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = up
            .serve(
                Fake {
                    socket,
                    stopped: stopped_tx,
                },
                move || {
                    let _ = done_tx.send(());
                },
            )
            .unwrap();
        // A successor that gives up: the old one keeps serving and accepts the next.
        let (p, mut inh) = Predecessor::connect(&path).unwrap();
        assert_eq!(inh.len(), 1);
        p.fail("bad configuration");
        drop(inh.take_listener(addr));
        let (p, mut inh) = Predecessor::connect(&path).unwrap();
        let socks = inh.take_listener(addr).unwrap();
        assert_eq!(socks[0].local_addr().unwrap(), addr);
        assert!(inh.is_empty());
        assert!(stopped.try_recv().is_err());
        p.serving(Duration::from_secs(5)).unwrap();
        stopped.recv_timeout(Duration::from_secs(5)).unwrap();
        // The old gateway drains only once the successor closed the connection.
        assert!(done.try_recv().is_err());
        drop(p);
        done.recv_timeout(Duration::from_secs(5)).unwrap();
        thread.join().unwrap();
        // The successor takes the path over.
        let again = UpgradeListener::bind(&path, true).unwrap();
        assert_eq!(again.path(), path);
    }

    /// Waits (at most 10 s) until a message or the end of the connection can be read.
    fn wait_readable(p: &Predecessor) {
        p.conn
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1];
        nix::sys::socket::recv(p.conn.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK).unwrap();
    }

    fn serve_fake(
        serving_timeout: Duration,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Receiver<()>,
        std::thread::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let up = UpgradeListener::bind(&path, false)
            .unwrap()
            .with_serving_timeout(serving_timeout);
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = up
            .serve(
                Fake {
                    socket: listener(),
                    stopped: stopped_tx,
                },
                move || {
                    let _ = done_tx.send(());
                },
            )
            .unwrap();
        (dir, path, stopped, done, thread)
    }

    #[test]
    fn a_successor_given_up_is_told_and_may_not_serve() {
        let (_dir, path, stopped, done, thread) = serve_fake(Duration::from_millis(200));
        // This successor takes longer than the old gateway waits: it is told it is
        // abandoned, and its late `serving` is refused: it must exit without serving.
        let (late, _inh) = Predecessor::connect(&path).unwrap();
        wait_readable(&late);
        let e = late.serving(Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&e, HandoffError::Refused(m) if m.starts_with("abandoned: ")),
            "{e}"
        );
        drop(late);
        // The old gateway never stopped accepting, and hands over to the next one.
        assert!(stopped.try_recv().is_err());
        assert!(done.try_recv().is_err());
        let (p, _inh) = Predecessor::connect(&path).unwrap();
        p.serving(Duration::from_secs(5)).unwrap();
        stopped.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(p);
        done.recv_timeout(Duration::from_secs(5)).unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn a_successor_whose_predecessor_closed_before_released_may_not_serve() {
        // The old gateway went away (closed the connection without a word) before it
        // acknowledged `serving`.
        let (a, b) = pair();
        let p = Predecessor { conn: b };
        drop(a);
        let e = p.serving(Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&e, HandoffError::Io(_)) || e.to_string().contains("closed the connection"),
            "{e}"
        );
        // Closed after `serving` was received but before `released`: the same.
        let (a, b) = pair();
        let p = Predecessor { conn: b };
        let old = std::thread::spawn(move || {
            let (m, _) = recv(&a).unwrap();
            assert!(matches!(m, Message::Serving { .. }));
            drop(a);
        });
        let e = p.serving(Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("closed the connection"), "{e}");
        old.join().unwrap();
    }

    #[test]
    fn relaunch_adds_upgrade_once() {
        let r = Relaunch::new(
            "/usr/bin/meshgate".into(),
            ["gateway", "--upgrade-socket", "/run/x.sock", "--upgrade"]
                .map(Into::into)
                .to_vec(),
        );
        assert_eq!(
            r.args(),
            ["gateway", "--upgrade-socket", "/run/x.sock", "--upgrade"]
                .map(std::ffi::OsString::from)
        );
    }
}
