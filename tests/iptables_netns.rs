//! `meshgate iptables` in real network namespaces, proven with real TCP connections.
//!
//! Each test makes two namespaces of its own, a "pod" (where the rules go) and a "peer",
//! joined by a veth pair created inside them (10.213.0.1 in the pod, 10.213.0.2 in the
//! peer), so that nothing is added to or routed through the host's namespace. Sockets
//! are opened from threads that entered a namespace with setns(2); connections as the
//! proxy's uid run under `ip netns exec ... setpriv`.
//!
//! Needs root and network namespaces: without them each test fails saying so.
mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

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

/// The directory holding iptables-restore / iptables-save, put first on meshgate's PATH.
fn iptables_dir() -> PathBuf {
    let restore = support::peer_bin("iptables-restore");
    let save = support::peer_bin("iptables-save");
    assert_eq!(
        restore.parent(),
        save.parent(),
        "iptables-restore and iptables-save should sit together"
    );
    restore.parent().expect("a directory").to_path_buf()
}

/// Two namespaces and a veth pair between them, deleted when dropped (even on panic).
struct Netns {
    pod: String,
    peer: String,
}

impl Netns {
    fn new() -> Netns {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "these tests create network namespaces and iptables rules: run them as root"
        );
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let ns = Netns {
            pod: format!("mg-ipt-pod-{id}"),
            peer: format!("mg-ipt-peer-{id}"),
        };
        let ip = support::peer_bin("ip");
        for name in [&ns.pod, &ns.peer] {
            let out = Command::new(&ip)
                .args(["netns", "add", name])
                .output()
                .expect("run ip");
            assert!(
                out.status.success(),
                "this test needs network namespaces (`ip netns add` as root) and could not make one: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // The veth pair is born inside the pod namespace, its peer end moved straight into
        // the peer namespace: the host's namespace never holds either end.
        run(Command::new(&ip).args([
            "-n", &ns.pod, "link", "add", "vpod", "type", "veth", "peer", "name", "vpeer", "netns",
            &ns.peer,
        ]));
        for (name, dev, addr) in [(&ns.pod, "vpod", POD_IP), (&ns.peer, "vpeer", PEER_IP)] {
            run(Command::new(&ip).args(["-n", name, "link", "set", "lo", "up"]));
            run(Command::new(&ip).args([
                "-n",
                name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]));
            run(Command::new(&ip).args(["-n", name, "link", "set", dev, "up"]));
        }
        ns
    }

    /// Runs `meshgate iptables ARGS` in the pod namespace.
    fn meshgate_iptables(&self, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            iptables_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new(support::peer_bin("ip"))
            .args([
                "netns",
                "exec",
                &self.pod,
                env!("CARGO_BIN_EXE_meshgate"),
                "iptables",
            ])
            .args(args)
            .env("PATH", path))
    }

    /// `iptables-save` in the pod namespace without its timestamp comments.
    fn iptables_save(&self) -> String {
        let out = run(Command::new(support::peer_bin("ip"))
            .args(["netns", "exec", &self.pod])
            .arg(support::peer_bin("iptables-save")));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Connects from the pod namespace as the proxy's uid and gid (1337) and writes `msg`.
    fn connect_as_proxy(&self, to: SocketAddrV4, msg: &str) {
        let script = format!(
            "exec 3<>/dev/tcp/{}/{} && printf %s '{msg}' >&3",
            to.ip(),
            to.port()
        );
        run(Command::new(support::peer_bin("ip"))
            .args(["netns", "exec", &self.pod])
            .arg(support::peer_bin("setpriv"))
            .args([
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
                "bash",
                "-c",
                &script,
            ]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Runs `f` on a thread that entered the named network namespace: sockets it makes live
/// there, and stay there when handed back.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
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

fn listen(ns: &str, addr: SocketAddrV4) -> TcpListener {
    let l = in_netns(ns, move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// Connects from a namespace and writes `msg` (the connection stays open until dropped).
fn connect(ns: &str, to: SocketAddrV4, msg: &'static str) -> TcpStream {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
        s.write_all(msg.as_bytes()).expect("write");
        s
    })
}

/// Waits (bounded) for the first connection on any of the listeners: which one got it,
/// the first bytes it carried, and its original destination (SO_ORIGINAL_DST) when NAT
/// rewrote it.
fn accept_one(listeners: &[(&str, &TcpListener)]) -> (String, String, Option<SocketAddrV4>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (name, l) in listeners {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    s.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).expect("read the client's bytes");
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    return (name.to_string(), msg, original_dst(&s));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept on {name}: {e}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "no connection arrived on any listener"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The destination the client asked for before REDIRECT, if conntrack has one.
fn original_dst(s: &TcpStream) -> Option<SocketAddrV4> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: sockaddr_in is plain data; the length tells the kernel its size.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )
    })
}

fn any(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)
}

#[test]
fn outbound_tcp_is_redirected_to_15001_with_its_original_destination() {
    let ns = Netns::new();
    let outbound = listen(&ns.pod, any(15001));
    let peer = listen(&ns.peer, SocketAddrV4::new(PEER_IP, 7000));
    ns.meshgate_iptables(&[]);

    let _c = connect(&ns.pod, SocketAddrV4::new(PEER_IP, 7000), "app");
    let (got, msg, dst) = accept_one(&[("outbound", &outbound), ("peer", &peer)]);
    assert_eq!((got.as_str(), msg.as_str()), ("outbound", "app"));
    assert_eq!(dst, Some(SocketAddrV4::new(PEER_IP, 7000)));

    // The proxy's own connections (uid/gid 1337) go out untouched.
    ns.connect_as_proxy(SocketAddrV4::new(PEER_IP, 7000), "proxy");
    let (got, msg, _) = accept_one(&[("outbound", &outbound), ("peer", &peer)]);
    assert_eq!((got.as_str(), msg.as_str()), ("peer", "proxy"));
}

#[test]
fn inbound_tcp_is_redirected_to_15006_except_excluded_ports() {
    let ns = Netns::new();
    let inbound = listen(&ns.pod, any(15006));
    let health = listen(&ns.pod, any(15021));
    let admin = listen(&ns.pod, any(9000));
    ns.meshgate_iptables(&["--exclude-inbound-ports", "9000"]);

    let _c = connect(&ns.peer, SocketAddrV4::new(POD_IP, 8080), "to-app");
    let all = [
        ("inbound", &inbound),
        ("health", &health),
        ("admin", &admin),
    ];
    let (got, msg, dst) = accept_one(&all);
    assert_eq!((got.as_str(), msg.as_str()), ("inbound", "to-app"));
    assert_eq!(dst, Some(SocketAddrV4::new(POD_IP, 8080)));

    // 15021 is always excluded; 9000 was excluded by flag.
    let _c = connect(&ns.peer, SocketAddrV4::new(POD_IP, 15021), "ready?");
    let (got, msg, _) = accept_one(&all);
    assert_eq!((got.as_str(), msg.as_str()), ("health", "ready?"));
    let _c = connect(&ns.peer, SocketAddrV4::new(POD_IP, 9000), "admin");
    let (got, msg, _) = accept_one(&all);
    assert_eq!((got.as_str(), msg.as_str()), ("admin", "admin"));
}

#[test]
fn excluded_outbound_ports_and_cidrs_are_not_redirected() {
    let ns = Netns::new();
    let outbound = listen(&ns.pod, any(15001));
    let p7001 = listen(&ns.peer, SocketAddrV4::new(PEER_IP, 7001));
    let p7002 = listen(&ns.peer, SocketAddrV4::new(PEER_IP, 7002));
    ns.meshgate_iptables(&["--exclude-outbound-ports", "7001"]);
    let all = [("outbound", &outbound), ("7001", &p7001), ("7002", &p7002)];

    let _c = connect(&ns.pod, SocketAddrV4::new(PEER_IP, 7001), "a");
    assert_eq!(accept_one(&all).0, "7001");
    let _c = connect(&ns.pod, SocketAddrV4::new(PEER_IP, 7002), "b");
    assert_eq!(accept_one(&all).0, "outbound");

    // Re-running replaces the rules: now the peer's address is excluded instead.
    ns.meshgate_iptables(&["--exclude-outbound-cidrs", "10.213.0.2/32"]);
    let _c = connect(&ns.pod, SocketAddrV4::new(PEER_IP, 7002), "c");
    assert_eq!(accept_one(&all).0, "7002");
    // ...and only one jump into ISTIO_OUTPUT exists.
    let save = ns.iptables_save();
    assert_eq!(save.matches("-j ISTIO_OUTPUT").count(), 1, "{save}");

    // Only the included range is captured.
    ns.meshgate_iptables(&["--include-outbound-cidrs", "10.99.0.0/16"]);
    let _c = connect(&ns.pod, SocketAddrV4::new(PEER_IP, 7002), "d");
    assert_eq!(accept_one(&all).0, "7002");
}

#[test]
fn cleanup_restores_the_rules_that_were_there() {
    let ns = Netns::new();
    // A rule of someone else's, which cleanup must leave alone.
    run(Command::new(support::peer_bin("ip"))
        .args(["netns", "exec", &ns.pod])
        .arg(support::peer_bin("iptables"))
        .args([
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "10.99.0.1/32",
            "-j",
            "RETURN",
        ]));
    let before = ns.iptables_save();
    assert!(before.contains("10.99.0.1/32"), "{before}");

    ns.meshgate_iptables(&[]);
    let during = ns.iptables_save();
    for chain in [
        "ISTIO_INBOUND",
        "ISTIO_REDIRECT",
        "ISTIO_IN_REDIRECT",
        "ISTIO_OUTPUT",
    ] {
        assert!(
            during.contains(&format!(":{chain} ")),
            "{chain} missing:\n{during}"
        );
    }
    ns.meshgate_iptables(&["--cleanup"]);
    assert_eq!(ns.iptables_save(), before);
    // Idempotent: nothing left to remove is not an error.
    ns.meshgate_iptables(&["--cleanup"]);
    assert_eq!(ns.iptables_save(), before);

    // Traffic flows directly again.
    let outbound = listen(&ns.pod, any(15001));
    let peer = listen(&ns.peer, SocketAddrV4::new(PEER_IP, 7000));
    let _c = connect(&ns.pod, SocketAddrV4::new(PEER_IP, 7000), "x");
    assert_eq!(
        accept_one(&[("outbound", &outbound), ("peer", &peer)]).0,
        "peer"
    );
}

#[test]
fn dry_run_prints_the_restore_input_and_changes_nothing() {
    let ns = Netns::new();
    let before = ns.iptables_save();
    let out = ns.meshgate_iptables(&["--dry-run", "--inbound-port", "16006"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("*nat\n") && text.ends_with("COMMIT\n"),
        "{text}"
    );
    assert!(text.contains("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006"));
    assert_eq!(ns.iptables_save(), before);
}

/// The pods harness the sidecar tests build on: two pods on one switch reach each other
/// by address, and a pod's own rules send what arrives for its application to 15006,
/// where the connection's original destination is the application's address.
#[test]
fn pods_on_a_switch_reach_each_other_and_capture_inbound() {
    use support::pods::PodNet;
    let net = PodNet::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let app = b.echo(8080, "app-b");
    let (status, body) = a.curl(None, &[&format!("http://{}/", b.addr(8080))]);
    assert_eq!(status, 200, "pod a reaches pod b's application: {body}");
    assert!(body.contains("app-b"), "{body}");

    b.iptables(&[]);
    let proxy = b.bind(15006);
    proxy.set_nonblocking(true).expect("nonblocking");
    let target = SocketAddrV4::new(b.ip, 8080);
    let _client = connect(&a.ns, target, "to-the-app");
    let (_, msg, dst) = accept_one(&[("15006", &proxy)]);
    assert_eq!(msg, "to-the-app");
    assert_eq!(
        dst,
        Some(target),
        "the original destination is the application's"
    );
    assert_eq!(
        app.requests(),
        1,
        "the captured connection never reached the application"
    );
}
