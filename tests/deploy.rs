//! The deployment files of `deploy/` run as written, checked against the binary itself.
//!
//! - Kubernetes: every kustomization renders offline (`kubectl kustomize`); each rendered
//!   Deployment is run as a kubelet would run it — the image's ENTRYPOINT with the
//!   container's args, `$(VAR)` expanded from its env (Downward API fields and resource
//!   limits included), its volumes laid out as ConfigMap/Secret volumes are (the `..data`
//!   symlink), mounted at their paths, the pod's sysctls, its user, no capability, a
//!   read-only root, a memory cgroup limited to `resources.limits.memory` (a child of
//!   this test's own, mounted read-only at /sys/fs/cgroup) — in a network namespace and a
//!   private mount namespace this test makes; then every probe, port and scrape path it
//!   names is checked from inside.
//! - systemd: the units pass `systemd-analyze verify`; their ExecStart lines run the same
//!   way (the unit's user, capabilities, RuntimeDirectory, StateDirectory, PrivateTmp,
//!   ProtectSystem=strict), and a reload (ExecReload with $MAINPID) is emulated with a
//!   notify socket: MAINPID and READY=1 from the successor, the old process gone, the
//!   ports answering throughout.
//! - The Containerfile: what it builds is what the manifests run (ENTRYPOINT, CMD, USER,
//!   EXPOSE, the runtime's libraries).
//!
//! Needs root (namespaces, mounts, cgroups: v1 memory or v2) and kubectl, ip, ss, setpriv, unshare, curl, openssl,
//! systemd-analyze, readelf (`scripts/install-peers.sh deploy`).
mod support;

use meshgate::config::source;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{TempDir, repo_root, wait_until};

const MESHGATE: &str = env!("CARGO_BIN_EXE_meshgate");
/// The uid the systemd units' `User=meshgate` stands for in these runs.
const UNIT_UID: u32 = 4242;

// ---------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------

fn tool(name: &str) -> PathBuf {
    let peers = repo_root().join(".peers/bin").join(name);
    if peers.exists() {
        // The link's target: a unit's private /tmp or read-only mounts may hide the
        // repository (a checkout under /tmp), never /usr.
        return std::fs::canonicalize(&peers).unwrap_or(peers);
    }
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: run scripts/install-peers.sh deploy");
}

fn run(cmd: &mut Command) -> String {
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "tests/deploy.rs makes network and mount namespaces: run it as root"
    );
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A scratch directory other users may traverse (the pods run as non-root users).
fn work_dir() -> TempDir {
    let t = TempDir::new();
    chmod(t.path(), 0o755);
    t
}

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

fn kubernetes_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

fn yaml_documents(text: &str) -> Vec<Value> {
    source::parse(text)
        .into_iter()
        .filter_map(|d| d.unwrap_or_else(|e| panic!("{e:?}")).root)
        .map(|n| n.to_value())
        .collect()
}

/// `kubectl kustomize DIR`, offline (no kubeconfig, nothing remote referenced).
fn render(dir: &Path) -> Vec<Value> {
    let text = run(Command::new(tool("kubectl"))
        .arg("kustomize")
        .arg(dir)
        .env("KUBECONFIG", "/dev/null")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9"));
    yaml_documents(&text)
}

/// Every kustomization.yaml under deploy/kubernetes: (dir, kind).
fn kustomizations() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "kustomization.yaml") {
                let doc = yaml_documents(&std::fs::read_to_string(&p).unwrap()).remove(0);
                out.push((dir.to_path_buf(), doc["kind"].as_str().unwrap().to_string()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&kubernetes_dir(), &mut out);
    out.sort();
    out
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn the<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let all = of_kind(objects, kind);
    assert_eq!(all.len(), 1, "one {kind} expected");
    all[0]
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("a selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Kubernetes quantities: 1Gi, 512Mi, 100m, 2, 1G.
fn quantity(q: &Value) -> f64 {
    let s = match q {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().unwrap();
    n * match unit {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("quantity unit {other:?}"),
    }
}

fn port_of(container: &Value, port: &Value) -> u16 {
    match port {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(name) => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == *name)
            .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
            .as_u64()
            .unwrap() as u16,
        other => panic!("port {other}"),
    }
}

fn container_ports(container: &Value) -> BTreeSet<u16> {
    container["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["containerPort"].as_u64().unwrap() as u16)
                .collect()
        })
        .unwrap_or_default()
}

/// The Services selecting the Deployment's pods, and the container ports they target.
fn service_target_ports(objects: &[Value], deployment: &Value) -> BTreeSet<u16> {
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let services: Vec<&Value> = of_kind(objects, "Service")
        .into_iter()
        .filter(|s| labels_match(&s["spec"]["selector"], labels))
        .collect();
    assert!(!services.is_empty(), "no Service selects the pods");
    services
        .iter()
        .flat_map(|s| s["spec"]["ports"].as_array().unwrap().iter())
        .map(|p| port_of(container, p.get("targetPort").unwrap_or(&p["port"])))
        .collect()
}

/// (port, path) of every HTTP probe, and of the Prometheus scrape annotations.
fn http_checks(deployment: &Value) -> Vec<(String, u16, String)> {
    let template = &deployment["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    let mut out = Vec::new();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        if let Some(get) = container.get(probe).and_then(|p| p.get("httpGet")) {
            out.push((
                probe.to_string(),
                port_of(container, &get["port"]),
                get["path"].as_str().unwrap().to_string(),
            ));
        }
    }
    let ann = &template["metadata"]["annotations"];
    if ann["prometheus.io/scrape"] == "true" {
        out.push((
            "prometheus scrape".into(),
            ann["prometheus.io/port"].as_str().unwrap().parse().unwrap(),
            ann["prometheus.io/path"].as_str().unwrap().to_string(),
        ));
    }
    out
}

fn arg_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&prefix)
            .or_else(|| (a == flag).then(|| args.get(i + 1).map(String::as_str))?)
    })
}

// ---------------------------------------------------------------------------------------
// The container image
// ---------------------------------------------------------------------------------------

/// The Containerfile's instructions, by stage: (FROM line, [(INSTRUCTION, rest)]).
fn containerfile() -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(repo_root().join("deploy/container/Containerfile")).unwrap();
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(t);
            logical.push(std::mem::take(&mut current));
        }
    }
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for l in logical.into_iter().filter(|l| !l.is_empty()) {
        let (ins, rest) = l.split_once(' ').unwrap();
        if ins == "FROM" {
            stages.push((rest.to_string(), Vec::new()));
        } else {
            stages
                .last_mut()
                .expect("FROM first")
                .1
                .push((ins.to_string(), rest.trim().to_string()));
        }
    }
    stages
}

fn instruction<'a>(stage: &'a [(String, String)], name: &str) -> &'a str {
    let all: Vec<&String> = stage
        .iter()
        .filter(|(i, _)| i == name)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(all.len(), 1, "one {name} in the final stage");
    all[0]
}

fn json_argv(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("exec form expected, {s}: {e}"))
}

struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    uid: u32,
    gid: u32,
    expose: BTreeSet<u16>,
}

fn image() -> Image {
    let stages = containerfile();
    let last = &stages.last().unwrap().1;
    let (uid, gid) = instruction(last, "USER").split_once(':').unwrap();
    Image {
        entrypoint: json_argv(instruction(last, "ENTRYPOINT")),
        cmd: json_argv(instruction(last, "CMD")),
        uid: uid.parse().unwrap(),
        gid: gid.parse().unwrap(),
        expose: instruction(last, "EXPOSE")
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------
// Namespaces and processes
// ---------------------------------------------------------------------------------------

/// A network namespace with its loopback up; deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        require_root();
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mgdeploy-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new(tool("ip")).args(["netns", "add", &name]));
        let ns = Netns { name };
        run(Command::new(tool("ip")).args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(tool("ip"));
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn sysctl(&self, key: &str, value: &str) {
        run(self
            .command(tool("sysctl"))
            .args(["-qw", &format!("{key}={value}")]));
    }

    /// (status, body) of an HTTP(S) GET from inside the namespace; status 0 if none.
    fn get(&self, url: &str, extra: &[&str]) -> (u16, String) {
        let out = self
            .command(tool("curl"))
            .args(["-sk", "--max-time", "3", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Listening TCP ports: port -> (addresses, pids).
    fn listening(&self) -> BTreeMap<u16, (BTreeSet<String>, BTreeSet<u32>)> {
        let out = run(self.command(tool("ss")).arg("-Hltnp"));
        let mut map: BTreeMap<u16, (BTreeSet<String>, BTreeSet<u32>)> = BTreeMap::new();
        for line in out.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(local) = fields.get(3) else { continue };
            let (addr, port) = local.rsplit_once(':').unwrap();
            let entry = map.entry(port.parse().unwrap()).or_default();
            entry.0.insert(addr.to_string());
            for part in line.split("pid=").skip(1) {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                entry.1.insert(digits.parse().unwrap());
            }
        }
        map
    }

    fn ports_of(&self, pid: u32) -> BTreeMap<u16, BTreeSet<String>> {
        self.listening()
            .into_iter()
            .filter(|(_, (_, pids))| pids.contains(&pid))
            .map(|(port, (addrs, _))| (port, addrs))
            .collect()
    }

    /// Runs `f` on a thread inside the namespace (its sockets are made there).
    fn in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new(tool("ip"))
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A path to mount: a file or directory of the test onto a path of the process' view.
struct Bind {
    src: PathBuf,
    dst: String,
    read_only: bool,
}

/// How a process is started: what a kubelet or systemd would set up, emulated.
#[derive(Default)]
struct Launch {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// Capabilities kept (ambient), e.g. `net_bind_service`; all others dropped.
    caps: Vec<String>,
    binds: Vec<Bind>,
    read_only_root: bool,
    no_new_privs: bool,
    /// A memory cgroup limit (bytes), as a kubelet sets from `resources.limits.memory`.
    memory_limit: Option<u64>,
}

/// A process started by [`Launch::spawn`]; SIGTERM, then SIGKILL, when dropped.
struct Proc {
    child: Option<Child>,
    /// Removed once the child is gone (fields drop after `Drop::drop`).
    _cgroup: Option<MemoryCgroup>,
    pid: u32,
    log: PathBuf,
    what: String,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.what, self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A memory cgroup, as a kubelet makes one for a container with a memory limit: a child
/// of this process's own memory cgroup (v1 `memory.limit_in_bytes`, or v2 `memory.max`),
/// removed when dropped.
struct MemoryCgroup {
    dir: PathBuf,
    /// Shell lines that mount the hierarchy at /sys/fs/cgroup in the process's mount
    /// namespace (`ip netns exec` gives it a fresh /sys without one), move the shell into
    /// the group and make the mount read-only, as a container runtime shows it.
    script: String,
}

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mgdeploy-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let v1 = own.lines().find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, controllers, path) = (p.next()?, p.next()?, p.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        });
        let (mount, path, file, fs) = match v1 {
            Some(path) if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() => (
                "/sys/fs/cgroup/memory",
                path,
                "memory.limit_in_bytes",
                "mkdir -p /sys/fs/cgroup/memory\nmount -t cgroup -o memory cgroup /sys/fs/cgroup/memory\n",
            ),
            _ => {
                let path = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .expect("a cgroup v1 memory controller or cgroup v2")
                    .to_string();
                (
                    "/sys/fs/cgroup",
                    path,
                    "memory.max",
                    "mount -t cgroup2 cgroup2 /sys/fs/cgroup\n",
                )
            }
        };
        let mut parent = Path::new(mount).join(path.trim_start_matches('/'));
        if !parent.is_dir() {
            parent = PathBuf::from(mount);
        }
        if file == "memory.max" {
            // v2: the memory controller must be enabled for the children; it may already be.
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory");
        }
        let dir = parent.join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        // Owned at once, so that a failure below still removes the directory.
        let mut cgroup = MemoryCgroup {
            script: String::new(),
            dir,
        };
        std::fs::write(cgroup.dir.join(file), limit.to_string())
            .unwrap_or_else(|e| panic!("{}/{file}: {e}", cgroup.dir.display()));
        let procs = shell_quote(&cgroup.dir.join("cgroup.procs").display().to_string());
        let (tmpfs, tmpfs_ro) = if mount == "/sys/fs/cgroup" {
            ("", "")
        } else {
            (
                "mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n",
                "mount -o remount,bind,ro /sys/fs/cgroup\n",
            )
        };
        cgroup.script =
            format!("{tmpfs}{fs}echo $$ > {procs}\nmount -o remount,bind,ro {mount}\n{tmpfs_ro}");
        cgroup
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The group empties once its processes are reaped; bounded, never a panic here.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = std::fs::remove_dir(&self.dir) {
            if Instant::now() > deadline {
                eprintln!("rmdir {}: {e}", self.dir.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Launch {
    /// Starts the process in `ns` and a private mount namespace: the top-level
    /// directories the binds land in are overlaid (so the host's files stay untouched
    /// and the rest of them visible), the binds mounted, the root (and those overlays)
    /// made read-only if asked, then the argv exec'd as the user with only `caps`.
    fn spawn(&self, what: &str, ns: &Netns, work: &Path) -> Proc {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = N.fetch_add(1, Ordering::Relaxed);
        let mut script = String::from("set -e\n");
        let cgroup = self.memory_limit.map(MemoryCgroup::new);
        if let Some(c) = &cgroup {
            script.push_str(&c.script);
        }
        let mut tops: Vec<String> = Vec::new();
        // Only where a mount point must be made: an overlay over a directory holding a
        // bind's source would bind the overlay's copy instead.
        for b in self.binds.iter().filter(|b| {
            let dst = Path::new(&b.dst);
            !(dst.exists() && dst.is_dir() == b.src.is_dir())
        }) {
            let mut p = PathBuf::from(&b.dst);
            while !p.exists() {
                p.pop();
            }
            let real = p.canonicalize().unwrap();
            let top = real.components().take(2).collect::<PathBuf>();
            let top = top.display().to_string();
            if top != "/" && !tops.contains(&top) {
                tops.push(top);
            }
        }
        for b in &self.binds {
            assert!(
                !tops.iter().any(|t| b.src.starts_with(t)),
                "{} would be hidden by an overlay of {tops:?}",
                b.src.display()
            );
        }
        for (i, top) in tops.iter().enumerate() {
            let o = work.join(format!("overlay-{id}-{i}"));
            std::fs::create_dir_all(o.join("upper")).unwrap();
            std::fs::create_dir_all(o.join("work")).unwrap();
            script.push_str(&format!(
                "mount -t overlay overlay -o lowerdir={top},upperdir={},workdir={} {top}\n",
                o.join("upper").display(),
                o.join("work").display()
            ));
        }
        // A bind over a directory holding other binds' sources (PrivateTmp's /tmp) last.
        let mut order: Vec<&Bind> = self.binds.iter().collect();
        order.sort_by_key(|b| self.binds.iter().any(|o| o.src.starts_with(&b.dst)));
        for b in order {
            let dst = shell_quote(&b.dst);
            if b.src.is_dir() {
                script.push_str(&format!("mkdir -p {dst}\n"));
            } else {
                script.push_str(&format!(
                    "mkdir -p \"$(dirname {dst})\"; [ -e {dst} ] || touch {dst}\n"
                ));
            }
            script.push_str(&format!(
                "mount --bind {} {dst}\n",
                shell_quote(&b.src.display().to_string())
            ));
            if b.read_only {
                script.push_str(&format!("mount -o remount,bind,ro {dst}\n"));
            }
        }
        if self.read_only_root {
            script.push_str("mount -o remount,bind,ro /\n");
            for top in &tops {
                script.push_str(&format!("mount -o remount,bind,ro {top}\n"));
            }
        }
        let groups = if self.groups.is_empty() {
            "--clear-groups".to_string()
        } else {
            format!(
                "--groups={}",
                self.groups
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let caps: String = self.caps.iter().map(|c| format!(",+{c}")).collect();
        script.push_str(&format!(
            "exec {} --reuid={} --regid={} {groups} --inh-caps=-all{caps} --ambient-caps=-all{caps} --bounding-set=-all{caps} {} -- \"$@\"\n",
            tool("setpriv").display(),
            self.uid,
            self.gid,
            if self.no_new_privs { "--no-new-privs" } else { "" },
        ));
        let log = work.join(format!("{}-{id}.log", what.replace('/', "-")));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = ns.command(tool("unshare"));
        cmd.args(["-m", "--propagation", "private"])
            .arg(tool("sh"))
            .arg("-c")
            .arg(&script)
            .arg("sh")
            .args(&self.argv)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().unwrap();
        Proc {
            pid: child.id(),
            child: Some(child),
            _cgroup: cgroup,
            log,
            what: what.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Kubernetes pods, emulated
// ---------------------------------------------------------------------------------------

/// What the cluster would hold that the rendering does not: Secrets, ConfigMaps made by
/// the operator, the projected token, and name resolution.
#[derive(Default)]
struct Cluster {
    secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    token: Option<String>,
    hosts: Vec<(String, String)>,
}

const POD_NAME: &str = "pod-0";
const POD_IP: &str = "127.0.0.1";

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a `$`.
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            let value = env
                .get(name)
                .unwrap_or_else(|| panic!("$({name}) is not defined in the container's env"));
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Writes a ConfigMap/Secret volume as the kubelet does: the files in a timestamped
/// directory, `..data` pointing at it, and a symlink per key through `..data`.
fn write_volume(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32, uid: u32, gid: u32) {
    let data = dir.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir_all(&data).unwrap();
    for (key, bytes) in files {
        let f = data.join(key);
        std::fs::write(&f, bytes).unwrap();
        chmod(&f, mode);
        chown(&f, uid, gid);
    }
    chmod(&data, 0o755);
    symlink("..2026_01_01_00_00_00.000000001", dir.join("..data")).unwrap();
    for key in files.keys() {
        symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
    chmod(dir, 0o755);
}

fn config_map_files(cm: &Value) -> BTreeMap<String, Vec<u8>> {
    cm["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().as_bytes().to_vec()))
        .collect()
}

/// The launch of a rendered Deployment's first container, as a kubelet would start it
/// from the image (`image`) with the cluster's objects (`objects`, then `cluster`).
fn pod_launch(
    deployment: &Value,
    objects: &[Value],
    cluster: &Cluster,
    image: &Image,
    work: &Path,
) -> Launch {
    let template = &deployment["spec"]["template"];
    let spec = &template["spec"];
    let container = &spec["containers"][0];
    let pod_sc = &spec["securityContext"];
    let sc = &container["securityContext"];
    let uid = sc["runAsUser"]
        .as_u64()
        .or(pod_sc["runAsUser"].as_u64())
        .unwrap_or(image.uid as u64) as u32;
    let gid = sc["runAsGroup"]
        .as_u64()
        .or(pod_sc["runAsGroup"].as_u64())
        .unwrap_or(image.gid as u64) as u32;
    let fs_group = pod_sc["fsGroup"].as_u64().map(|g| g as u32);
    assert_ne!(uid, 0, "the container runs as root");

    // Environment, in order, as the kubelet resolves it.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut env_list = Vec::new();
    for e in container["env"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(f) = e["valueFrom"].get("fieldRef") {
            let path = f["fieldPath"].as_str().unwrap();
            match path {
                "metadata.name" => POD_NAME.to_string(),
                "metadata.namespace" => deployment["metadata"]["namespace"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                "status.podIP" => POD_IP.to_string(),
                "spec.serviceAccountName" => spec["serviceAccountName"].as_str().unwrap().into(),
                p if p.starts_with("metadata.labels['") => {
                    let key = &p["metadata.labels['".len()..p.len() - 2];
                    template["metadata"]["labels"][key]
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: the pod has no label {key}"))
                        .to_string()
                }
                other => panic!("fieldRef {other} is not emulated"),
            }
        } else if let Some(r) = e["valueFrom"].get("resourceFieldRef") {
            let resource = r["resource"].as_str().unwrap();
            let (section, key) = resource.split_once('.').unwrap();
            let amount = quantity(&container["resources"][section][key]);
            let divisor = r.get("divisor").map(quantity).unwrap_or(1.0);
            format!("{}", (amount / divisor).ceil() as u64)
        } else {
            panic!("env {name}: {e} is not emulated");
        };
        env.insert(name.clone(), value.clone());
        env_list.push((name, value));
    }

    let mut argv: Vec<String> = match container.get("command") {
        Some(c) => c
            .as_array()
            .unwrap()
            .iter()
            .map(|a| expand(a.as_str().unwrap(), &env))
            .collect(),
        None => image.entrypoint.clone(),
    };
    match container.get("args") {
        Some(args) => argv.extend(
            args.as_array()
                .unwrap()
                .iter()
                .map(|a| expand(a.as_str().unwrap(), &env)),
        ),
        None if container.get("command").is_none() => argv.extend(image.cmd.clone()),
        None => {}
    }

    // Volumes.
    let mut binds = vec![Bind {
        src: PathBuf::from(MESHGATE),
        dst: image.entrypoint[0].clone(),
        read_only: true,
    }];
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    for m in container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = m["name"].as_str().unwrap();
        let v = volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
        let dir = work.join(format!("volume-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let group = fs_group.unwrap_or(0);
        if let Some(cm) = v.get("configMap") {
            let cm_name = cm["name"].as_str().unwrap();
            // The test's content replaces a generated one (NAME-HASH) of the same name.
            let supplied = cluster.config_maps.iter().find(|(k, _)| {
                cm_name == k.as_str()
                    || cm_name
                        .strip_prefix(k.as_str())
                        .and_then(|r| r.strip_prefix('-'))
                        .is_some_and(|h| h.len() == 10 && !h.contains('-'))
            });
            let files = supplied.map(|(_, f)| f.clone()).unwrap_or_else(|| {
                config_map_files(named(objects, "ConfigMap", cm_name).unwrap_or_else(|| {
                    panic!("ConfigMap {cm_name} is neither rendered nor made by the test")
                }))
            });
            let mode = cm["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            write_volume(&dir, &files, mode, 0, group);
        } else if let Some(secret) = v.get("secret") {
            let s_name = secret["secretName"].as_str().unwrap();
            let files = cluster
                .secrets
                .get(s_name)
                .unwrap_or_else(|| panic!("Secret {s_name} is not made by the test"));
            let mode = secret["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            write_volume(&dir, files, mode, 0, group);
        } else if let Some(projected) = v.get("projected") {
            let mut files = BTreeMap::new();
            for source in projected["sources"].as_array().unwrap() {
                let t = &source["serviceAccountToken"];
                assert!(
                    t.is_object(),
                    "only serviceAccountToken projections are emulated"
                );
                files.insert(
                    t["path"].as_str().unwrap().to_string(),
                    cluster.token.clone().expect("a token").into_bytes(),
                );
            }
            write_volume(&dir, &files, 0o600, uid, gid);
        } else if v.get("emptyDir").is_some() {
            chown(&dir, uid, group);
            chmod(&dir, 0o2775);
        } else {
            panic!("volume {v} is not emulated");
        }
        binds.push(Bind {
            src: dir,
            dst: m["mountPath"].as_str().unwrap().to_string(),
            read_only: m["readOnly"] == true || v.get("emptyDir").is_none(),
        });
    }
    if !cluster.hosts.is_empty() {
        let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        for (ip, name) in &cluster.hosts {
            hosts.push_str(&format!("{ip} {name}\n"));
        }
        let f = work.join("hosts");
        std::fs::write(&f, hosts).unwrap();
        chmod(&f, 0o644);
        binds.push(Bind {
            src: f,
            dst: "/etc/hosts".into(),
            read_only: true,
        });
    }

    let drop_all = sc["capabilities"]["drop"]
        .as_array()
        .is_some_and(|d| d.iter().any(|c| c == "ALL"));
    assert!(drop_all, "the container keeps capabilities");
    Launch {
        argv,
        env: env_list,
        uid,
        gid,
        groups: fs_group.into_iter().collect(),
        caps: Vec::new(),
        binds,
        read_only_root: sc["readOnlyRootFilesystem"] == true,
        no_new_privs: sc["allowPrivilegeEscalation"] == false,
        memory_limit: container["resources"]["limits"]
            .get("memory")
            .map(|m| quantity(m) as u64),
    }
}

/// A rendered Deployment running in its own namespace.
struct RunningPod {
    ns: Netns,
    proc: Proc,
}

fn start_pod(
    what: &str,
    deployment: &Value,
    objects: &[Value],
    cluster: &Cluster,
    work: &Path,
    ns: Option<Netns>,
) -> RunningPod {
    let ns = ns.unwrap_or_else(Netns::new);
    for s in deployment["spec"]["template"]["spec"]["securityContext"]["sysctls"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        ns.sysctl(s["name"].as_str().unwrap(), s["value"].as_str().unwrap());
    }
    let launch = pod_launch(deployment, objects, cluster, &image(), work);
    let proc = launch.spawn(what, &ns, work);
    RunningPod { ns, proc }
}

/// Waits for the startup probe, then checks every probe path, the scrape path and the
/// ports: those the container, its Services and probes name are listened on by the
/// process, and every port it listens on beyond loopback is declared.
fn check_pod(pod: &mut RunningPod, deployment: &Value, objects: &[Value]) {
    let checks = http_checks(deployment);
    let (_, port, path) = checks.first().expect("a probe").clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        pod.proc.assert_running();
        if pod.ns.get(&format!("http://127.0.0.1:{port}{path}"), &[]).0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {path} on {port} never answered 200:\n{}",
            pod.proc.what,
            pod.proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (what, port, path) in &checks {
        let (status, body) = pod.ns.get(&format!("http://127.0.0.1:{port}{path}"), &[]);
        assert_eq!(status, 200, "{what} {port}{path}: {body}");
    }
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut declared = container_ports(container);
    let targets = service_target_ports(objects, deployment);
    let probes: BTreeSet<u16> = checks.iter().map(|c| c.1).collect();
    // Listeners open right after the first configuration is applied.
    wait_until(
        "the declared ports are listened on",
        Duration::from_secs(10),
        || {
            let listened = pod.ns.ports_of(pod.proc.pid);
            declared
                .iter()
                .chain(&targets)
                .chain(&probes)
                .all(|p| listened.contains_key(p))
        },
    );
    let listened = pod.ns.ports_of(pod.proc.pid);
    for p in targets.iter().chain(&probes) {
        assert!(declared.contains(p), "port {p} is not a containerPort");
    }
    declared.extend(&targets);
    for (port, addrs) in &listened {
        let public = addrs.iter().any(|a| !a.starts_with("127.") && a != "[::1]");
        assert!(
            !public || declared.contains(port),
            "{} listens on {port} ({addrs:?}), which no containerPort declares",
            pod.proc.what
        );
    }
}

fn gateway_deployment(objects: &[Value]) -> &Value {
    the(objects, "Deployment")
}

/// A self-signed certificate for `name`: (cert PEM, key PEM).
fn self_signed(name: &str) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

fn ingress_cert(cluster: &mut Cluster) {
    let (crt, key) = self_signed("shop.example.com");
    cluster.secrets.insert(
        "ingress-cert".into(),
        BTreeMap::from([("tls.crt".into(), crt), ("tls.key".into(), key)]),
    );
}

// ---------------------------------------------------------------------------------------
// Kubernetes: static checks
// ---------------------------------------------------------------------------------------

#[test]
fn every_kustomization_renders_offline_and_says_what_the_gateway_needs() {
    let all = kustomizations();
    let components: Vec<&PathBuf> = all
        .iter()
        .filter(|(_, k)| k == "Component")
        .map(|(d, _)| d)
        .collect();
    let mut used_components = BTreeSet::new();
    let mut rendered = 0;
    for (dir, kind) in &all {
        if kind == "Component" {
            continue;
        }
        let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
        for c in &components {
            let rel = c
                .strip_prefix(kubernetes_dir())
                .unwrap()
                .display()
                .to_string();
            if text.contains(&rel) {
                used_components.insert(rel);
            }
        }
        let objects = render(dir);
        rendered += 1;
        for d in of_kind(&objects, "Deployment") {
            let template = &d["spec"]["template"];
            let labels = &template["metadata"]["labels"];
            assert!(labels_match(&d["spec"]["selector"]["matchLabels"], labels));
            let spec = &template["spec"];
            let c = &spec["containers"][0];
            let sc = &c["securityContext"];
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{dir:?}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{dir:?}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{dir:?}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{dir:?}");
            assert!(sc["capabilities"].get("add").is_none(), "{dir:?}");
            let args: Vec<String> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            if args[0] != "gateway" {
                continue;
            }
            // The gateway: probes, scrape, drain, heap, disruption and scaling.
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                assert_eq!(c[probe]["httpGet"]["port"], 15021, "{dir:?} {probe}");
                assert_eq!(c[probe]["httpGet"]["path"], "/healthz/ready", "{dir:?}");
            }
            let ann = &template["metadata"]["annotations"];
            assert_eq!(ann["prometheus.io/port"], "15090");
            assert_eq!(ann["prometheus.io/path"], "/stats/prometheus");
            let drain: u64 = arg_value(&args, "--drain-timeout")
                .unwrap()
                .parse()
                .unwrap();
            let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
            assert!(grace > drain, "{dir:?}: grace {grace}s <= drain {drain}s");
            assert_eq!(
                spec["securityContext"]["sysctls"],
                json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}])
            );
            let env = c["env"].as_array().unwrap();
            let heap = env
                .iter()
                .find(|e| e["name"] == "MESHGATE_MAX_HEAP")
                .expect("MESHGATE_MAX_HEAP");
            // A share of the memory limit, which the gateway reads from its cgroup (see
            // the pods run below): no Downward API arithmetic.
            assert_eq!(heap["value"], "75%", "{dir:?}");
            assert!(
                quantity(&c["resources"]["limits"]["memory"]) > 0.0,
                "{dir:?}: --max-heap 75% needs a memory limit"
            );
            assert!(
                !env.iter().any(|e| e["name"] == "MEMORY_LIMIT_MIB"),
                "{dir:?}"
            );
            let name = d["metadata"]["name"].as_str().unwrap();
            let pdb = the(&objects, "PodDisruptionBudget");
            assert!(labels_match(
                &pdb["spec"]["selector"]["matchLabels"],
                labels
            ));
            let hpa = the(&objects, "HorizontalPodAutoscaler");
            assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], name);
            assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
            assert!(
                hpa["spec"]["minReplicas"].as_u64().unwrap()
                    > pdb["spec"]["minAvailable"].as_u64().unwrap(),
                "the PodDisruptionBudget would block every eviction at the minimum scale"
            );
            assert!(
                named(
                    &objects,
                    "ServiceAccount",
                    spec["serviceAccountName"].as_str().unwrap()
                )
                .is_some()
            );
            let svc = the(&objects, "Service");
            assert!(labels_match(&svc["spec"]["selector"], labels));
            let istio = labels["istio"].as_str().unwrap();
            match dir.file_name().unwrap().to_str().unwrap() {
                "egress" => {
                    assert_eq!(istio, "egressgateway");
                    assert_eq!(svc["spec"]["type"], "ClusterIP");
                    assert!(svc["spec"].get("externalTrafficPolicy").is_none());
                }
                "east-west" => {
                    assert_eq!(istio, "eastwestgateway");
                    assert_eq!(labels["topology.istio.io/network"], "network1");
                    assert!(
                        args.iter()
                            .any(|a| a.contains("topology.istio.io/network=$("))
                    );
                    assert_eq!(svc["spec"]["type"], "LoadBalancer");
                    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
                    assert!(service_target_ports(&objects, d).contains(&15443));
                }
                "ingress" | "ingress-joined" | "gateway" => {
                    assert_eq!(istio, "ingressgateway");
                    assert_eq!(svc["spec"]["type"], "LoadBalancer");
                    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
                }
                other => panic!("a gateway kustomization not checked here: {other}"),
            }
        }
        for svc in of_kind(&objects, "Service") {
            if svc["metadata"]["name"] == "meshgate-control-plane" {
                let names: BTreeMap<u64, &str> = svc["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p["port"].as_u64().unwrap(), p["name"].as_str().unwrap()))
                    .collect();
                assert_eq!(
                    names,
                    BTreeMap::from([
                        (15010, "grpc-xds"),
                        (15012, "https-dns"),
                        (15014, "http-monitoring")
                    ])
                );
            }
        }
    }
    assert!(rendered >= 6, "only {rendered} kustomizations");
    for c in &components {
        let rel = c
            .strip_prefix(kubernetes_dir())
            .unwrap()
            .display()
            .to_string();
        assert!(
            used_components.contains(&rel),
            "component {rel} is rendered by no kustomization"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Kubernetes: the gateways run as rendered
// ---------------------------------------------------------------------------------------

fn run_gateway_overlay(dir: &str) {
    let work = work_dir();
    let objects = render(&kubernetes_dir().join(dir));
    let d = gateway_deployment(&objects);
    let mut cluster = Cluster::default();
    ingress_cert(&mut cluster);
    let mut pod = start_pod(dir, d, &objects, &cluster, work.path(), None);
    check_pod(&mut pod, d, &objects);
    pod.proc.assert_running();
}

#[test]
fn the_base_gateway_runs_as_rendered() {
    run_gateway_overlay("gateway");
}

#[test]
fn the_ingress_gateway_runs_as_rendered_and_serves_80_and_443() {
    let work = work_dir();
    let objects = render(&kubernetes_dir().join("overlays/ingress"));
    let d = gateway_deployment(&objects);
    let mut cluster = Cluster::default();
    ingress_cert(&mut cluster);
    let mut pod = start_pod("ingress", d, &objects, &cluster, work.path(), None);
    check_pod(&mut pod, d, &objects);
    // The pod's user binds 80 and 443 with no capability: the sysctl does it.
    let (status, _) = pod
        .ns
        .get("http://127.0.0.1:80/", &["-H", "host: shop.example.com"]);
    assert_eq!(status, 301, "HTTP is redirected to HTTPS");
    let out = run(pod
        .ns
        .command(tool("openssl"))
        .args([
            "s_client",
            "-connect",
            "127.0.0.1:443",
            "-servername",
            "shop.example.com",
        ])
        .stdin(Stdio::null()));
    assert!(out.contains("s:CN = shop.example.com"), "{out}");
    // The heap threshold: 75% (the env the flag reads) of the memory limit the pod's
    // cgroup has, as the gateway read it there.
    let environ = std::fs::read(format!("/proc/{}/environ", pod.proc.pid)).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.split('\0').any(|e| e == "MESHGATE_MAX_HEAP=75%"),
        "{environ}"
    );
    let limit =
        quantity(&d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
            as u64;
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pod.proc.pid)).unwrap();
    assert!(
        cgroup.lines().any(|l| l.contains("/mgdeploy-")),
        "the pod is not in its memory cgroup: {cgroup}"
    );
    let (status, stats) = pod.ns.get("http://127.0.0.1:15000/stats", &[]);
    assert_eq!(status, 200, "{stats}");
    let stat = |name: &str| -> Option<u64> {
        stats.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
    };
    assert_eq!(stat("meshgate.memory_limit_bytes"), Some(limit), "{stats}");
    assert_eq!(
        stat("overload.envoy.resource_monitors.fixed_heap.max_heap_size_bytes"),
        Some(limit * 3 / 4),
        "{stats}"
    );
    assert!(
        pod.proc.log().contains("of the cgroup memory limit"),
        "{}",
        pod.proc.log()
    );
}

#[test]
fn the_egress_gateway_runs_as_rendered() {
    run_gateway_overlay("overlays/egress");
}

#[test]
fn the_east_west_gateway_runs_as_rendered() {
    run_gateway_overlay("overlays/east-west");
}

// ---------------------------------------------------------------------------------------
// Kubernetes: the control plane, and a gateway joining it
// ---------------------------------------------------------------------------------------

/// A JWKS with one ES256 key, and a service-account JWT of `issuer` signed by it.
fn service_account_jwt(issuer: &str, ns: &str, sa: &str, aud: &str) -> (Vec<u8>, String) {
    use base64::Engine;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = key.public_key_raw().to_vec();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "sa-key", "use": "sig",
        "alg": "ES256", "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65])}]});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("sa-key".into());
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"iss": issuer, "aud": [aud], "exp": now + 3600, "iat": now,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "1"}}});
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der()),
    )
    .unwrap();
    (jwks.to_string().into_bytes(), token)
}

fn read_dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_control_plane_runs_as_rendered_and_an_ingress_gateway_joins_it() {
    let work = work_dir();
    let cp_objects = render(&kubernetes_dir().join("control-plane"));
    let gw_objects = render(&kubernetes_dir().join("examples/ingress-joined"));
    let cp = the(&cp_objects, "Deployment");
    let gw = gateway_deployment(&gw_objects);
    let cp_args: Vec<String> = cp["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();

    // The CA Secret as docs/deploy.md makes it.
    let ca = work.path().join("ca");
    run(
        Command::new(repo_root().join("deploy/kubernetes/control-plane/ca-secret.sh"))
            .arg(&ca)
            .current_dir(work.path()),
    );
    let issuer = arg_value(&cp_args, "--jwt-issuer").unwrap();
    let ns = gw["metadata"]["namespace"].as_str().unwrap();
    let sa = gw["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let audience = gw["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"]["audience"].as_str())
        .expect("a projected token");
    let (jwks, token) = service_account_jwt(issuer, ns, sa, audience);

    let mut cluster = Cluster::default();
    cluster
        .secrets
        .insert("meshgate-ca".into(), read_dir_files(&ca));
    cluster.config_maps.insert(
        "meshgate-jwks".into(),
        BTreeMap::from([("jwks.json".into(), jwks)]),
    );
    cluster.config_maps.insert(
        "meshgate-ca-root-cert".into(),
        BTreeMap::from([(
            "root-cert.pem".into(),
            std::fs::read(ca.join("root-cert.pem")).unwrap(),
        )]),
    );
    cluster.token = Some(token);
    ingress_cert(&mut cluster);
    // The Service's name resolves to the control plane, which shares the namespace here.
    let xds = arg_value(
        &gw["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        "--xds",
    )
    .unwrap()
    .to_string();
    let host = xds.rsplit_once(':').unwrap().0.to_string();
    assert!(named(&cp_objects, "Service", host.split('.').next().unwrap()).is_some());
    cluster.hosts.push(("127.0.0.1".into(), host));

    let cp_work = work.path().join("cp");
    std::fs::create_dir_all(&cp_work).unwrap();
    chmod(&cp_work, 0o755);
    let mut cp_pod = start_pod("control-plane", cp, &cp_objects, &cluster, &cp_work, None);
    check_pod(&mut cp_pod, cp, &cp_objects);

    let gw_work = work.path().join("gw");
    std::fs::create_dir_all(&gw_work).unwrap();
    chmod(&gw_work, 0o755);
    let ns_handle = Netns {
        name: cp_pod.ns.name.clone(),
    };
    let mut gw_pod = start_pod(
        "joined-gateway",
        gw,
        &gw_objects,
        &cluster,
        &gw_work,
        Some(ns_handle),
    );
    check_pod(&mut gw_pod, gw, &gw_objects);
    let (status, body) = gw_pod.ns.get("https://127.0.0.1:443/", &[]);
    assert_eq!(status, 200, "{body}\n{}", gw_pod.proc.log());
    assert!(body.contains("joined to the control plane"), "{body}");
    // The control plane saw the gateway's identity, from the projected token.
    let (_, syncz) = cp_pod.ns.get("http://127.0.0.1:15014/debug/syncz", &[]);
    assert!(
        syncz.contains(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")),
        "{syncz}"
    );
    // Both pods share one namespace: only the first deletes it.
    std::mem::forget(gw_pod.ns);
    drop(gw_pod.proc);
}

// ---------------------------------------------------------------------------------------
// The container image
// ---------------------------------------------------------------------------------------

#[test]
fn the_container_image_runs_what_the_manifests_name() {
    let stages = containerfile();
    assert!(stages.len() >= 2, "a multi-stage build");
    let (build_from, build) = &stages[0];
    let (run_from, last) = stages.last().unwrap();
    // Same Debian release for the build and the runtime: the glibc the binary links.
    assert!(build_from.contains("-bookworm"), "{build_from}");
    assert!(run_from.contains("distroless/cc-debian12"), "{run_from}");
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let needed_rust = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let image_rust = build_from
        .split(':')
        .nth(1)
        .unwrap()
        .split('-')
        .next()
        .unwrap();
    let v = |s: &str| {
        s.split('.')
            .map(|p| p.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert!(
        v(image_rust) >= v(needed_rust),
        "rust {image_rust} < {needed_rust}"
    );
    let build_run: String = build
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, r)| r.as_str())
        .collect();
    assert!(build_run.contains("cargo build --release --locked --bin meshgate"));
    let img = image();
    let copy = last
        .iter()
        .find(|(i, r)| i == "COPY" && r.starts_with("--from="))
        .map(|(_, r)| r.split_whitespace().collect::<Vec<_>>())
        .unwrap();
    assert_eq!(
        copy.last().unwrap(),
        &img.entrypoint[0],
        "ENTRYPOINT is the copied binary"
    );
    assert!(
        build_run.contains(copy[1]),
        "the build stage makes {}",
        copy[1]
    );
    assert_ne!(img.uid, 0);
    assert_ne!(img.gid, 0);

    // The runtime has every library the binary needs.
    let elf = run(Command::new(tool("readelf")).args(["-d", MESHGATE]));
    let distroless_cc = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libstdc++.so.6",
    ];
    for line in elf.lines().filter(|l| l.contains("(NEEDED)")) {
        let lib = line.split('[').nth(1).unwrap().trim_end_matches(']');
        assert!(
            distroless_cc.contains(&lib),
            "{lib} is not in distroless/cc"
        );
    }

    // EXPOSE: exactly the ports the manifests' containers declare; USER: theirs.
    let mut declared = BTreeSet::new();
    for (dir, kind) in kustomizations() {
        if kind == "Component" {
            continue;
        }
        for d in of_kind(&render(&dir), "Deployment") {
            let spec = &d["spec"]["template"]["spec"];
            declared.extend(container_ports(&spec["containers"][0]));
            assert_eq!(spec["securityContext"]["runAsUser"], img.uid, "{dir:?}");
            assert_eq!(spec["securityContext"]["runAsGroup"], img.gid, "{dir:?}");
        }
    }
    assert_eq!(img.expose, declared);

    // ENTRYPOINT + CMD run as the image's user, on a configuration at the path CMD names.
    let work = work_dir();
    let objects = render(&kubernetes_dir().join("gateway"));
    let config = config_map_files(
        of_kind(&objects, "ConfigMap")
            .into_iter()
            .find(|c| {
                c["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("gateway-config")
            })
            .unwrap(),
    );
    let config_path = arg_value(&img.cmd, "--config").unwrap();
    let dir = work.path().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    write_volume(&dir, &config, 0o644, 0, 0);
    let ns = Netns::new();
    ns.sysctl("net.ipv4.ip_unprivileged_port_start", "0");
    let launch = Launch {
        argv: img.entrypoint.iter().chain(&img.cmd).cloned().collect(),
        uid: img.uid,
        gid: img.gid,
        binds: vec![
            Bind {
                src: MESHGATE.into(),
                dst: img.entrypoint[0].clone(),
                read_only: true,
            },
            Bind {
                src: dir,
                dst: config_path.to_string(),
                read_only: true,
            },
        ],
        read_only_root: true,
        no_new_privs: true,
        ..Launch::default()
    };
    let mut p = launch.spawn("image", &ns, work.path());
    wait_until(
        "the image's command is ready",
        Duration::from_secs(60),
        || {
            p.assert_running();
            ns.get("http://127.0.0.1:15021/healthz/ready", &[]).0 == 200
        },
    );
    for port in ns.ports_of(p.pid).keys() {
        assert!(
            img.expose.contains(port) || *port == 15000,
            "the image's command listens on {port}, not EXPOSEd"
        );
    }
}

// ---------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------

fn systemd_dir() -> PathBuf {
    repo_root().join("deploy/systemd")
}

/// A unit's [Service] settings (every value of each key, in order).
fn unit(name: &str) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(systemd_dir().join(name)).unwrap();
    let mut section = String::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').unwrap();
            out.entry(k.into()).or_default().push(v.into());
        }
    }
    out
}

fn one<'a>(u: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    let v = u.get(key).unwrap_or_else(|| panic!("no {key}"));
    assert_eq!(v.len(), 1, "{key}");
    &v[0]
}

fn exec_argv(line: &str) -> Vec<String> {
    assert!(
        !line.contains(['"', '\'', '%', '\\']),
        "quotes, specifiers and escapes are not emulated: {line}"
    );
    line.split_whitespace().map(str::to_string).collect()
}

/// The example /etc/meshgate, copied, with a certificate, readable by the unit's user.
fn etc_meshgate(work: &Path) -> PathBuf {
    let dst = work.join("etc-meshgate");
    run(Command::new("cp")
        .arg("-a")
        .arg(systemd_dir().join("etc/meshgate"))
        .arg(&dst));
    let (crt, key) = self_signed("appliance.example.com");
    std::fs::write(dst.join("certs/gateway.crt"), crt).unwrap();
    std::fs::write(dst.join("certs/gateway.key"), key).unwrap();
    run(Command::new("chown")
        .arg("-R")
        .arg(format!("0:{UNIT_UID}"))
        .arg(&dst));
    run(Command::new("chmod")
        .arg("-R")
        .arg("u=rwX,g=rX,o=")
        .arg(&dst));
    chmod(&dst, 0o755);
    dst
}

/// The unit's process as systemd would start it: its user, capabilities, directories
/// and file-system protection.
fn unit_launch(u: &BTreeMap<String, Vec<String>>, work: &Path) -> Launch {
    let argv = exec_argv(one(u, "ExecStart"));
    assert_eq!(one(u, "User"), "meshgate");
    let mut binds = vec![
        Bind {
            src: MESHGATE.into(),
            dst: argv[0].clone(),
            read_only: true,
        },
        Bind {
            src: etc_meshgate(work),
            dst: "/etc/meshgate".into(),
            read_only: true,
        },
    ];
    let mut dir = |key: &str, mode_key: &str, base: &str| {
        if let Some(names) = u.get(key) {
            let mode = u32::from_str_radix(one(u, mode_key), 8).unwrap();
            for name in names {
                let d = work.join(format!("{key}-{name}"));
                std::fs::create_dir_all(&d).unwrap();
                chown(&d, UNIT_UID, UNIT_UID);
                chmod(&d, mode);
                binds.push(Bind {
                    src: d,
                    dst: format!("{base}/{name}"),
                    read_only: false,
                });
            }
        }
    };
    dir("RuntimeDirectory", "RuntimeDirectoryMode", "/run");
    dir("StateDirectory", "StateDirectoryMode", "/var/lib");
    if one(u, "PrivateTmp") == "yes" {
        let d = work.join("private-tmp");
        std::fs::create_dir_all(&d).unwrap();
        chmod(&d, 0o1777);
        binds.push(Bind {
            src: d,
            dst: "/tmp".into(),
            read_only: false,
        });
    }
    let caps: Vec<String> = u
        .get("AmbientCapabilities")
        .map(|v| {
            v.iter()
                .flat_map(|c| c.split_whitespace())
                .map(|c| c.trim_start_matches("CAP_").to_lowercase())
                .collect()
        })
        .unwrap_or_default();
    let bounding: Vec<String> = one(u, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    assert_eq!(caps, bounding, "the bounding set is the ambient set");
    Launch {
        argv,
        uid: UNIT_UID,
        gid: UNIT_UID,
        caps,
        binds,
        read_only_root: one(u, "ProtectSystem") == "strict",
        no_new_privs: one(u, "NoNewPrivileges") == "yes",
        ..Launch::default()
    }
}

#[test]
fn the_systemd_units_verify() {
    require_root();
    let work = work_dir();
    // systemd-analyze checks that ExecStart's program exists: the binary at its path.
    let script = format!(
        "set -e; mount -t overlay overlay -o lowerdir=/usr,upperdir={0}/u,workdir={0}/w /usr; \
         touch /usr/local/bin/meshgate; mount --bind {1} /usr/local/bin/meshgate; \
         cd {2}; exec {3} verify ./meshgate-gateway.service ./meshgate-control-plane.service",
        work.path().display(),
        MESHGATE,
        systemd_dir().display(),
        tool("systemd-analyze").display(),
    );
    std::fs::create_dir_all(work.path().join("u")).unwrap();
    std::fs::create_dir_all(work.path().join("w")).unwrap();
    let out = Command::new(tool("unshare"))
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");

    let gw = unit("meshgate-gateway.service");
    assert_eq!(one(&gw, "Type"), "notify");
    assert_eq!(one(&gw, "NotifyAccess"), "all");
    assert_eq!(one(&gw, "ExecReload"), "/bin/kill -USR2 $MAINPID");
    assert_eq!(one(&gw, "RuntimeDirectory"), "meshgate");
    assert_eq!(one(&gw, "CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    let argv = exec_argv(one(&gw, "ExecStart"));
    assert_eq!(
        arg_value(&argv, "--upgrade-socket"),
        Some("/run/meshgate/gateway-upgrade.sock")
    );
    let drain: u64 = arg_value(&argv, "--drain-timeout")
        .unwrap()
        .parse()
        .unwrap();
    let stop: u64 = one(&gw, "TimeoutStopSec").parse().unwrap();
    assert!(
        stop > drain,
        "TimeoutStopSec {stop} <= --drain-timeout {drain}"
    );
    let sysusers = std::fs::read_to_string(systemd_dir().join("meshgate.sysusers")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u meshgate ")));
}

#[test]
fn the_control_plane_unit_runs_as_written() {
    let work = work_dir();
    let u = unit("meshgate-control-plane.service");
    let launch = unit_launch(&u, work.path());
    let ns = Netns::new();
    let mut p = launch.spawn("control-plane-unit", &ns, work.path());
    wait_until(
        "the control plane is ready",
        Duration::from_secs(30),
        || {
            p.assert_running();
            ns.get("http://127.0.0.1:15014/ready", &[]).0 == 200
        },
    );
    let ports = ns.ports_of(p.pid);
    let addr = |flag: &str| arg_value(&launch.argv, flag).unwrap().to_string();
    for flag in ["--xds-addr", "--xds-tls-addr", "--debug-addr"] {
        let a = addr(flag);
        let (host, port) = a.rsplit_once(':').unwrap();
        let listened = &ports[&port.parse().unwrap()];
        assert!(listened.contains(host), "{flag} {a}: {listened:?}");
    }
    // The CA was made in the state directory, by the unit's user.
    let ca_dir = arg_value(&launch.argv, "--ca-dir").unwrap();
    assert!(ca_dir.starts_with("/var/lib/meshgate/"));
    let root = work
        .path()
        .join("StateDirectory-meshgate")
        .join(ca_dir.trim_start_matches("/var/lib/meshgate/"))
        .join("root-cert.pem");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&root).unwrap().uid(), UNIT_UID);
}

/// A bound datagram socket standing for systemd's notify socket.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn new(work: &Path) -> NotifySocket {
        let path = work.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        chmod(&path, 0o777);
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits for a message holding every one of `lines`; returns it.
    fn wait_for(
        &mut self,
        lines: &[&str],
        timeout: Duration,
        proc: &mut Proc,
        must_run: bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.seen.iter().find(|m| {
                lines.iter().all(|l| {
                    m.lines()
                        .any(|x| x == *l || (l.ends_with('=') && x.starts_with(l)))
                })
            }) {
                return m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no notification with {lines:?} (seen {:?}):\n{}",
                self.seen,
                proc.log()
            );
            match self.socket.recv(&mut buf) {
                Ok(n) => self
                    .seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                // Nothing queued: a process that is gone will not send it.
                Err(_) if must_run => proc.assert_running(),
                Err(_) => {}
            }
        }
    }
}

/// Sends requests to the ports without pause until stopped; counts those that fail.
struct Prober {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(ns: &Netns, checks: Vec<(u16, &'static str)>) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, n, f) = (stop.clone(), sent.clone(), failures.clone());
        let name = ns.name.clone();
        let thread = std::thread::spawn(move || {
            let ns = Netns { name };
            ns.in_ns(move || {
                while !s.load(Ordering::Relaxed) {
                    for (port, expect) in &checks {
                        let r = (|| -> std::io::Result<String> {
                            let mut c = std::net::TcpStream::connect(("127.0.0.1", *port))?;
                            c.set_read_timeout(Some(Duration::from_secs(5)))?;
                            c.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n")?;
                            let mut out = String::new();
                            c.read_to_string(&mut out)?;
                            Ok(out)
                        })();
                        n.fetch_add(1, Ordering::Relaxed);
                        match r {
                            Ok(text) if text.starts_with(expect) => {}
                            Ok(text) => f.lock().unwrap().push(format!("{port}: {}", text.lines().next().unwrap_or(""))),
                            Err(e) => f.lock().unwrap().push(format!("{port}: {e}")),
                        }
                    }
                }
            });
            std::mem::forget(ns);
        });
        Prober {
            stop,
            sent,
            failures,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (
            self.sent.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit_once(") ").map(|(_, r)| r.chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        })
        .unwrap_or(false)
}

/// The gateway unit started as systemd would, READY=1 on the notify socket, then
/// `systemctl reload`: ExecReload with $MAINPID; the successor reports MAINPID and
/// READY=1, the old process exits 0, and 15021 and 80 answer every request meanwhile.
#[test]
fn the_gateway_unit_runs_and_reloads_into_a_successor_without_refusing_a_connection() {
    let work = work_dir();
    let u = unit("meshgate-gateway.service");
    let mut launch = unit_launch(&u, work.path());
    let mut notify = NotifySocket::new(work.path());
    launch.binds.push(Bind {
        src: notify.path.clone(),
        dst: "/run/systemd/notify".into(),
        read_only: false,
    });
    launch
        .env
        .push(("NOTIFY_SOCKET".into(), "/run/systemd/notify".into()));
    let ns = Netns::new();
    let mut p = launch.spawn("gateway-unit", &ns, work.path());
    notify.wait_for(&["READY=1"], Duration::from_secs(30), &mut p, true);
    assert_eq!(ns.get("http://127.0.0.1:15021/healthz/ready", &[]).0, 200);
    let ports = ns.ports_of(p.pid);
    for port in [80, 443, 15021, 15090] {
        assert!(
            ports.contains_key(&port),
            "{port} not listened on: {ports:?}"
        );
    }
    let (status, _) = ns.get(
        "https://127.0.0.1:443/",
        &["-H", "host: appliance.example.com"],
    );
    assert_eq!(
        status, 503,
        "HTTPS answers (no application on 8000 behind it)"
    );

    let prober = Prober::start(&ns, vec![(15021, "HTTP/1.1 200"), (80, "HTTP/1.1 301")]);
    wait_until("the prober runs", Duration::from_secs(10), || {
        prober.sent.load(Ordering::Relaxed) > 20
    });
    notify.seen.clear();
    let old = p.pid;
    let reload = one(&u, "ExecReload").replace("$MAINPID", &old.to_string());
    let reload = exec_argv(&reload);
    run(Command::new(&reload[0]).args(&reload[1..]));
    let msg = notify.wait_for(
        &["MAINPID=", "READY=1"],
        Duration::from_secs(30),
        &mut p,
        false,
    );
    let new: u32 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(new, old);
    // The old one drains (--drain-timeout) and exits 0.
    let drain: u64 = arg_value(&launch.argv, "--drain-timeout")
        .unwrap()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(drain + 15);
    let status = loop {
        if let Some(s) = p.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the old gateway did not exit:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "the old gateway exited {status}:\n{}",
        p.log()
    );
    assert!(alive(new), "the successor is gone:\n{}", p.log());
    let after = prober.sent.load(Ordering::Relaxed);
    wait_until(
        "requests reach the successor",
        Duration::from_secs(10),
        || prober.sent.load(Ordering::Relaxed) > after + 20,
    );
    let (sent, failures) = prober.finish();
    let ports = ns.ports_of(new);
    for port in [80, 443, 15021, 15090] {
        assert!(
            ports.contains_key(&port),
            "the successor does not listen on {port}"
        );
    }
    // SAFETY: the successor is a process this test started (through the old one).
    unsafe { libc::kill(new as i32, libc::SIGTERM) };
    wait_until(
        "the successor exits",
        Duration::from_secs(drain + 15),
        || !alive(new),
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}
