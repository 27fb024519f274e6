//! "Pods" in network namespaces the test makes itself, joined by a bridge in a "switch"
//! namespace of their own: nothing is added to, or routed through, the host's namespace.
//!
//! ```text
//!   switch netns: br0 ── v1 ─┐   v2 ─┐   ...
//!                            │       │
//!   pod netns:          eth0 10.215.0.11/16   eth0 10.215.0.12/16   (default route on eth0)
//! ```
//!
//! - [`PodNet::new`] makes the switch; [`PodNet::pod`] a pod with its own address.
//! - Processes run inside a pod with [`Pod::command`] (as root) or [`Pod::command_as`] (as
//!   a uid, e.g. the proxy's 1337, which `meshgate iptables` leaves alone); a
//!   [`PodProcess`] kills its process when dropped.
//! - The test itself opens sockets inside a pod from a thread that entered its namespace
//!   with setns(2) ([`Pod::in_ns`], [`Pod::bind`], [`Pod::echo`]): a socket stays in the
//!   namespace it was made in, so a listener bound there can be served by the test's own
//!   servers ([`super::EchoUpstream`]) while the pod's iptables rules apply to it.
//! - Every namespace is deleted when its owner is dropped, even on panic.
//!
//! Needs root (network namespaces, iptables): without it, [`PodNet::new`] fails saying so.
#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The pods' subnet (each switch is its own world, so every PodNet may reuse it).
pub const SUBNET_PREFIX: u8 = 16;
/// The uid and gid Istio's proxies run as, exempted by `meshgate iptables`.
pub const PROXY_UID: u32 = 1337;

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip() -> PathBuf {
    super::peer_bin("ip")
}

/// A unique suffix for namespace names: this process and a counter.
fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn add_netns(name: &str) {
    let out = Command::new(ip())
        .args(["netns", "add", name])
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "this test needs network namespaces (`ip netns add` as root) and could not make one: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    run(Command::new(ip()).args(["-n", name, "link", "set", "lo", "up"]));
}

/// The switch: a namespace holding the bridge every pod's veth is plugged into.
pub struct PodNet {
    switch: String,
    next: AtomicU32,
}

impl PodNet {
    pub fn new() -> PodNet {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "these tests create network namespaces and iptables rules: run them as root"
        );
        let switch = format!("mg-sw-{}", unique());
        add_netns(&switch);
        run(Command::new(ip()).args(["-n", &switch, "link", "add", "br0", "type", "bridge"]));
        run(Command::new(ip()).args(["-n", &switch, "link", "set", "br0", "up"]));
        PodNet {
            switch,
            next: AtomicU32::new(0),
        }
    }

    /// A new pod named `name` (for its namespace's name) with the next free address.
    pub fn pod(&self, name: &str) -> Pod {
        let idx = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        assert!(idx < 240, "too many pods");
        let addr = Ipv4Addr::new(10, 215, 0, 10 + idx as u8);
        let ns = format!("mg-{name}-{}", unique());
        add_netns(&ns);
        let port = format!("v{idx}");
        // Born in the pod, its peer end moved straight into the switch.
        run(Command::new(ip()).args([
            "-n",
            &ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.switch,
        ]));
        run(Command::new(ip()).args(["-n", &self.switch, "link", "set", &port, "master", "br0"]));
        run(Command::new(ip()).args(["-n", &self.switch, "link", "set", &port, "up"]));
        run(Command::new(ip()).args([
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/{SUBNET_PREFIX}"),
            "dev",
            "eth0",
        ]));
        run(Command::new(ip()).args(["-n", &ns, "link", "set", "eth0", "up"]));
        // Everything off the pod goes out of eth0: service VIPs too, which the pod's
        // iptables redirect to its proxy before they ever leave.
        run(Command::new(ip()).args(["-n", &ns, "route", "add", "default", "dev", "eth0"]));
        Pod {
            name: name.to_string(),
            ns,
            ip: addr,
        }
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let _ = Command::new(ip())
            .args(["netns", "del", &self.switch])
            .output();
    }
}

/// One pod: a network namespace with an address on the switch.
pub struct Pod {
    pub name: String,
    /// The namespace's name (`ip netns exec NS ...`).
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl Pod {
    /// `program` run inside the pod, as root.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(ip());
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// `program` run inside the pod as `uid` (and the same gid, no supplementary
    /// groups): the proxy's 1337 is what `meshgate iptables` exempts.
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(ip());
        c.args(["netns", "exec", &self.ns])
            .arg(super::peer_bin("setpriv"))
            .args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".to_string(),
            ])
            .arg(program);
        c
    }

    /// Starts `cmd`, its output going to `log` (appended), killed when the returned
    /// guard is dropped.
    pub fn spawn(&self, what: &str, cmd: &mut Command, log: &std::path::Path) -> PodProcess {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        // A process running as another uid (the proxy's) may reopen its standard output
        // by name (Envoy's access log on `/dev/stdout`), as it can a pod's pipe.
        std::fs::set_permissions(log, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .expect("log file mode");
        let err = out.try_clone().expect("clone log handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what} in pod {}: {e}", self.name));
        PodProcess {
            what: format!("{what} in pod {}", self.name),
            child,
            log: log.to_path_buf(),
        }
    }

    /// Runs `meshgate iptables ARGS` in the pod (with the project's iptables first on
    /// PATH) and returns its output; panics if it fails.
    pub fn iptables(&self, args: &[&str]) -> Output {
        let restore = super::peer_bin("iptables-restore");
        let dir = restore.parent().expect("a directory");
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = self.command(env!("CARGO_BIN_EXE_meshgate"));
        c.arg("iptables").args(args).env("PATH", path);
        run(&mut c)
    }

    /// Runs `curl ARGS` in the pod as `uid` (root when `None`): `-s` is added, and
    /// `-w '\n%{http_code}'` so that the last line is the status (000 when none came).
    /// Returns (status, body).
    pub fn curl(&self, uid: Option<u32>, args: &[&str]) -> (u16, String) {
        let mut c = match uid {
            Some(uid) => self.command_as(uid, "curl"),
            None => self.command("curl"),
        };
        c.args(["-s", "-m", "10", "-w", "\n%{http_code}"])
            .args(args);
        let out = c.output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Runs `f` on a thread that entered the pod's network namespace: sockets it makes
    /// live in the pod, and stay there when handed back.
    pub fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; only this thread changes namespace.
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }

    /// A listener in the pod on `0.0.0.0:port` (0: a free port).
    pub fn bind(&self, port: u16) -> TcpListener {
        let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        self.in_ns(move || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in pod {}: {e}", self.name))
    }

    /// The test's echo server (see [`super::EchoUpstream`]) listening in the pod on
    /// `port` of every address: the pod's application.
    pub fn echo(&self, port: u16, name: &str) -> super::EchoUpstream {
        super::EchoUpstream::start_with(self.bind(port), name)
    }

    /// `ADDR:PORT` of this pod.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new(ip()).args(["netns", "del", &self.ns]).output();
    }
}

/// A process running in a pod, killed when dropped.
pub struct PodProcess {
    what: String,
    pub child: Child,
    pub log: PathBuf,
}

impl PodProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with its output) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.what, self.output());
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
