//! The control plane under test: `meshgate control-plane` in a child process, so that its
//! CPU time and memory are read from /proc for it alone.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The meshgate binary Cargo built with this benchmark (release for `cargo bench`).
pub fn meshgate_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_meshgate"))
}

/// A running `meshgate control-plane`.
pub struct ControlPlaneProcess {
    child: Child,
    /// The control plane's own pid (not a wrapper's).
    pub pid: u32,
    pub xds: SocketAddr,
    pub debug: SocketAddr,
}

/// A loopback address with a port the OS just had free.
fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl ControlPlaneProcess {
    /// Starts the control plane on `config`, logging at `BENCH_LOG` (default `warn`).
    /// `wrapper` (a command line, e.g. `heaptrack -o FILE`) runs it under a tool.
    pub fn start(config: &Path, wrapper: Option<&str>) -> Result<ControlPlaneProcess, String> {
        let bin = meshgate_binary();
        if !bin.exists() {
            return Err(format!(
                "{} is missing: build it with `cargo build --release`",
                bin.display()
            ));
        }
        let (xds, debug) = (
            free_addr().map_err(|e| e.to_string())?,
            free_addr().map_err(|e| e.to_string())?,
        );
        let mut words = wrapper.unwrap_or("").split_whitespace();
        let mut command = match words.next() {
            Some(tool) => {
                let mut c = Command::new(tool);
                c.args(words).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        command
            .arg("control-plane")
            .arg("--config")
            .arg(config)
            .arg("--xds-addr")
            .arg(xds.to_string())
            .arg("--debug-addr")
            .arg(debug.to_string())
            .env(
                "RUST_LOG",
                std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut cp = ControlPlaneProcess {
            pid: child.id(),
            child,
            xds,
            debug,
        };
        if wrapper.is_some() {
            cp.pid = cp.find_under_wrapper(&bin)?;
        }
        Ok(cp)
    }

    /// The pid of the meshgate process started by the wrapper.
    fn find_under_wrapper(&mut self, bin: &Path) -> Result<u32, String> {
        let bin = bin.canonicalize().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let found = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .find(|&pid| {
                    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == bin)
                        && descends_from(pid, self.child.id())
                });
            if let Some(pid) = found {
                return Ok(pid);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the wrapper exited ({status})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("no meshgate process appeared under the wrapper".into())
    }

    /// Waits until `/ready` answers 200 (the configuration is loaded and xDS served).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            if ready(self.debug) {
                return Ok(start.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the control plane exited ({status})"));
            }
            if start.elapsed() > timeout {
                return Err(format!("the control plane was not ready after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// User + system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.pid.to_string())
    }

    /// A memory figure of /proc/PID/status (`VmRSS`, `VmHWM`), in MiB.
    pub fn memory_mib(&self, key: &str) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it as Ctrl-C does (so that a wrapper sees a clean end), killing it if it
    /// has not exited within 20 s.
    pub fn stop(mut self) {
        // SAFETY: sends a signal to a process this benchmark started.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && self.running() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time of process `pid` (a number or `self`) so far, in seconds.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // utime and stime are fields 14 and 15 of stat; counted after ")" they are 12, 13.
    (ticks(11) + ticks(12)) / hz
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..16 {
        if pid == ancestor {
            return true;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        match stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok())
        {
            Some(parent) if parent != 0 => pid = parent,
            _ => return false,
        }
    }
    false
}

/// `GET /ready` answers 200.
fn ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}
