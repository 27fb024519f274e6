//! `meshgate iptables`: the istio-iptables job. In the current network namespace it
//! redirects outbound TCP to the sidecar's outbound port (15001) and inbound TCP to its
//! inbound port (15006) with NAT `REDIRECT` rules in Istio's chains (`ISTIO_INBOUND`,
//! `ISTIO_REDIRECT`, `ISTIO_IN_REDIRECT`, `ISTIO_OUTPUT`), leaving the proxy's own
//! traffic (its uid/gid) alone so that it does not loop.
//!
//! The rules go in with one `iptables-restore --noflush`, so they apply atomically: either
//! all of them or none. Running it again replaces meshgate's chains and jump rules rather
//! than adding a second copy; `--cleanup` removes exactly those chains and jumps.
//! IPv4 only (ip6tables is not driven).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

/// The chains meshgate owns in the nat table, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    "ISTIO_INBOUND",
    "ISTIO_REDIRECT",
    "ISTIO_IN_REDIRECT",
    "ISTIO_OUTPUT",
];

/// Inbound ports never redirected: the agent's status port, the health port and
/// Envoy's Prometheus port (Istio's injector always passes them to `-d`).
pub const ALWAYS_EXCLUDED_INBOUND: [u16; 3] = [15020, 15021, 15090];

/// Istio's HBONE port: inbound traffic to it is never redirected, and the proxy's own
/// loopback traffic to it is not sent back inbound.
const HBONE_PORT: u16 = 15008;

/// iptables' `multiport` match takes at most 15 ports.
const MULTIPORT_MAX: usize = 15;

/// Flags keep istio-iptables' names (and its short letters); the second name of each is
/// an alias in meshgate's own words.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port every captured outbound TCP connection is redirected to.
    #[arg(
        short = 'p',
        long = "envoy-port",
        visible_alias = "outbound-port",
        default_value_t = 15001
    )]
    pub outbound_port: u16,
    /// Port every captured inbound TCP connection is redirected to.
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        visible_alias = "inbound-port",
        default_value_t = 15006
    )]
    pub inbound_port: u16,
    /// The proxy's uid: its own traffic is never redirected.
    #[arg(short = 'u', long, default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The proxy's gid (defaults to the uid).
    #[arg(short = 'g', long)]
    pub proxy_gid: Option<u32>,
    /// Inbound ports to redirect, comma-separated; `*` for all, empty for none.
    #[arg(short = 'b', long, default_value = "*")]
    pub inbound_ports: String,
    /// Inbound ports not to redirect when all are (`*`), comma-separated. 15020, 15021
    /// and 15090 are always excluded.
    #[arg(
        short = 'd',
        long = "local-exclude-ports",
        visible_alias = "exclude-inbound-ports",
        default_value = ""
    )]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports not to redirect, comma-separated.
    #[arg(
        short = 'o',
        long = "local-outbound-ports-exclude",
        visible_alias = "exclude-outbound-ports",
        default_value = ""
    )]
    pub exclude_outbound_ports: String,
    /// Outbound destination CIDRs to redirect, comma-separated; `*` for all, empty for none.
    #[arg(
        short = 'i',
        long = "outbound-ip-ranges-include",
        visible_alias = "include-outbound-cidrs",
        default_value = "*"
    )]
    pub include_outbound_cidrs: String,
    /// Outbound destination CIDRs not to redirect, comma-separated.
    #[arg(
        short = 'x',
        long = "outbound-ip-ranges-exclude",
        visible_alias = "exclude-outbound-cidrs",
        default_value = ""
    )]
    pub exclude_outbound_cidrs: String,
    /// Print the iptables-restore input instead of applying it (needs neither root nor
    /// iptables).
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Remove meshgate's chains and the jumps to them from PREROUTING and OUTPUT.
    #[arg(long, visible_alias = "cleanup-only")]
    pub cleanup: bool,
}

/// Which ports or ranges a direction captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture<T> {
    /// Everything (`*`).
    All,
    /// Only these (empty: nothing).
    Only(Vec<T>),
}

/// The validated settings the rules are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub inbound_ports: Capture<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub include_outbound_cidrs: Capture<String>,
    pub exclude_outbound_cidrs: Vec<String>,
}

fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn ports(flag: &str, list: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for p in items(list) {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {
                if !out.contains(&n) {
                    out.push(n)
                }
            }
            _ => return Err(format!("{flag}: `{p}` is not a port (1-65535)")),
        }
    }
    Ok(out)
}

/// An IPv4 CIDR in canonical form (`10.1.2.3/8` becomes `10.0.0.0/8`; a bare address is /32).
fn cidr(flag: &str, s: &str) -> Result<String, String> {
    let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
    let addr: Ipv4Addr = addr.parse().map_err(|_| {
        if addr.contains(':') {
            format!(
                "{flag}: `{s}`: IPv6 ranges are not supported (meshgate iptables drives IPv4 only)"
            )
        } else {
            format!("{flag}: `{s}` is not an IPv4 CIDR")
        }
    })?;
    let len: u8 = match len.parse() {
        Ok(n) if n <= 32 => n,
        _ => return Err(format!("{flag}: `{s}` has a bad prefix length")),
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok(format!("{}/{len}", Ipv4Addr::from(u32::from(addr) & mask)))
}

fn cidrs(flag: &str, list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for c in items(list) {
        let c = cidr(flag, c)?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

impl Plan {
    /// Validates the flags.
    pub fn from_args(a: &Args) -> Result<Plan, String> {
        let inbound_ports = if a.inbound_ports.trim() == "*" {
            Capture::All
        } else {
            Capture::Only(ports("--inbound-ports", &a.inbound_ports)?)
        };
        let mut exclude_inbound_ports = ALWAYS_EXCLUDED_INBOUND.to_vec();
        for p in ports("--local-exclude-ports", &a.exclude_inbound_ports)? {
            if !exclude_inbound_ports.contains(&p) {
                exclude_inbound_ports.push(p);
            }
        }
        let include_outbound_cidrs = if a.include_outbound_cidrs.trim() == "*" {
            Capture::All
        } else {
            Capture::Only(cidrs(
                "--outbound-ip-ranges-include",
                &a.include_outbound_cidrs,
            )?)
        };
        if a.outbound_port == 0 || a.inbound_port == 0 {
            return Err("--envoy-port and --inbound-capture-port must not be 0".into());
        }
        Ok(Plan {
            outbound_port: a.outbound_port,
            inbound_port: a.inbound_port,
            proxy_uid: a.proxy_uid,
            proxy_gid: a.proxy_gid.unwrap_or(a.proxy_uid),
            inbound_ports,
            exclude_inbound_ports,
            exclude_outbound_ports: ports(
                "--local-outbound-ports-exclude",
                &a.exclude_outbound_ports,
            )?,
            include_outbound_cidrs,
            exclude_outbound_cidrs: cidrs(
                "--outbound-ip-ranges-exclude",
                &a.exclude_outbound_cidrs,
            )?,
        })
    }

    /// The nat table's rules, in Istio's order, as iptables-restore lines (without the
    /// `*nat` header, chain declarations and `COMMIT`).
    pub fn rules(&self) -> Vec<String> {
        let mut r = Vec::new();
        r.push(format!(
            "-A ISTIO_INBOUND -p tcp --dport {HBONE_PORT} -j RETURN"
        ));
        r.push(format!(
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        ));
        r.push(format!(
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        ));

        // Inbound: everything but the excluded ports, or only the listed ones.
        match &self.inbound_ports {
            Capture::All => {
                r.push("-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
                for chunk in self.exclude_inbound_ports.chunks(MULTIPORT_MAX) {
                    r.push(format!(
                        "-A ISTIO_INBOUND -p tcp {} -j RETURN",
                        port_match(chunk)
                    ));
                }
                r.push("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into());
            }
            Capture::Only(list) if !list.is_empty() => {
                r.push("-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
                for p in list {
                    r.push(format!(
                        "-A ISTIO_INBOUND -p tcp --dport {p} -j ISTIO_IN_REDIRECT"
                    ));
                }
            }
            Capture::Only(_) => {}
        }

        // Outbound.
        r.push("-A OUTPUT -p tcp -j ISTIO_OUTPUT".into());
        for chunk in self.exclude_outbound_ports.chunks(MULTIPORT_MAX) {
            r.push(format!(
                "-A ISTIO_OUTPUT -p tcp {} -j RETURN",
                port_match(chunk)
            ));
        }
        // Envoy's inbound upstream connections come from 127.0.0.6 over lo: never redirect.
        r.push("-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN".into());
        // The proxy calling its own pod's address over lo goes back through inbound
        // capture; other loopback traffic from the app is left alone; anything else the
        // proxy sends is not captured.
        for owner in [
            format!("--uid-owner {}", self.proxy_uid),
            format!("--gid-owner {}", self.proxy_gid),
        ] {
            r.push(format!(
                "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport {HBONE_PORT} -m owner {owner} -j ISTIO_IN_REDIRECT"
            ));
            r.push(format!(
                "-A ISTIO_OUTPUT -o lo -m owner ! {owner} -j RETURN"
            ));
            r.push(format!("-A ISTIO_OUTPUT -m owner {owner} -j RETURN"));
        }
        r.push("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN".into());
        for c in &self.exclude_outbound_cidrs {
            r.push(format!("-A ISTIO_OUTPUT -d {c} -j RETURN"));
        }
        match &self.include_outbound_cidrs {
            Capture::All => r.push("-A ISTIO_OUTPUT -j ISTIO_REDIRECT".into()),
            Capture::Only(list) => {
                for c in list {
                    r.push(format!("-A ISTIO_OUTPUT -d {c} -j ISTIO_REDIRECT"));
                }
                r.push("-A ISTIO_OUTPUT -j RETURN".into());
            }
        }
        r
    }
}

fn port_match(ports: &[u16]) -> String {
    if let [one] = ports {
        format!("--dport {one}")
    } else {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        format!("-m multiport --dports {}", list.join(","))
    }
}

/// What of meshgate's is in the nat table now, read from `iptables-save -t nat`: the
/// jump rules into its chains from PREROUTING/OUTPUT (as `-A` lines) and its chains.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub jumps: Vec<String>,
    pub chains: Vec<String>,
}

impl Installed {
    pub fn parse(nat_save: &str) -> Installed {
        let mut out = Installed::default();
        let mut in_nat = false;
        for line in nat_save.lines() {
            let line = line.trim_end();
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if CHAINS.contains(&name) {
                    out.chains.push(name.to_string());
                }
            } else if line.starts_with("-A PREROUTING ") || line.starts_with("-A OUTPUT ") {
                let target = line.rsplit_once(" -j ").map(|(_, t)| t.trim());
                if target.is_some_and(|t| CHAINS.contains(&t)) {
                    out.jumps.push(line.to_string());
                }
            }
        }
        out
    }

    /// iptables-restore lines that remove the jumps and flush then delete the chains.
    fn removal(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .jumps
            .iter()
            .map(|j| format!("-D{}", &j[2..]))
            .collect();
        r.extend(self.chains.iter().map(|c| format!("-F {c}")));
        r.extend(self.chains.iter().map(|c| format!("-X {c}")));
        r
    }
}

/// The whole iptables-restore input that replaces whatever of meshgate's is installed
/// with the plan's rules.
pub fn restore_input(plan: &Plan, installed: &Installed) -> String {
    let mut s = String::from("*nat\n");
    for line in installed.removal() {
        let _ = writeln!(s, "{line}");
    }
    for c in CHAINS {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for line in plan.rules() {
        let _ = writeln!(s, "{line}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The iptables-restore input that removes meshgate's rules, or `None` when none are there.
pub fn cleanup_input(installed: &Installed) -> Option<String> {
    if installed.jumps.is_empty() && installed.chains.is_empty() {
        return None;
    }
    let mut s = String::from("*nat\n");
    for line in installed.removal() {
        let _ = writeln!(s, "{line}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Finds an iptables program on PATH, then in /usr/sbin and /sbin (not on a plain
/// user's PATH on Debian).
fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/sbin".into());
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn program(name: &str) -> Result<PathBuf, String> {
    find_program(name).ok_or_else(|| {
        format!("`{name}` was not found on PATH, /usr/sbin or /sbin; install iptables (Debian: apt-get install iptables)")
    })
}

fn read_installed() -> Result<Installed, String> {
    let save = program("iptables-save")?;
    let out = Command::new(&save)
        .args(["-t", "nat"])
        .output()
        .map_err(|e| format!("running {}: {e}", save.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -t nat failed ({}): {}",
            save.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Installed::parse(&String::from_utf8_lossy(&out.stdout)))
}

fn restore(input: &str) -> Result<(), String> {
    let bin = program("iptables-restore")?;
    let mut child = Command::new(&bin)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("writing to iptables-restore: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for iptables-restore: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "iptables-restore --noflush failed ({}): {}\ninput was:\n{input}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn apply(args: &Args) -> Result<(), String> {
    let plan = Plan::from_args(args)?;
    if args.dry_run && !args.cleanup {
        print!("{}", restore_input(&plan, &Installed::default()));
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 && !args.dry_run {
        return Err(
            "changing iptables rules needs root (CAP_NET_ADMIN in this network namespace); run as root or use --dry-run"
                .into(),
        );
    }
    let installed = read_installed()?;
    if args.cleanup {
        match cleanup_input(&installed) {
            Some(input) if args.dry_run => print!("{input}"),
            Some(input) => restore(&input)?,
            None => {}
        }
        return Ok(());
    }
    restore(&restore_input(&plan, &installed))
}

pub fn run(args: Args) -> ExitCode {
    match apply(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate iptables: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn plan(flags: &[&str]) -> Result<Plan, String> {
        let mut argv = vec!["iptables"];
        argv.extend_from_slice(flags);
        Plan::from_args(&Cli::try_parse_from(argv).map_err(|e| e.to_string())?.args)
    }

    #[test]
    fn defaults_match_istio_order() {
        let r = plan(&[]).unwrap().rules();
        let want = [
            "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-A ISTIO_INBOUND -p tcp -m multiport --dports 15020,15021,15090 -j RETURN",
            "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
            "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        ];
        assert_eq!(r, want);
    }

    #[test]
    fn include_lists_and_exclusions() {
        let p = plan(&[
            "--inbound-ports",
            "8080,9090",
            "--exclude-outbound-ports",
            "22,443",
            "--include-outbound-cidrs",
            "10.1.2.3/16",
            "--exclude-outbound-cidrs",
            "10.1.9.9",
            "--proxy-gid",
            "7",
            "--outbound-port",
            "16001",
        ])
        .unwrap();
        let r = p.rules();
        assert!(r.contains(&"-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT".into()));
        assert!(
            r.contains(&"-A ISTIO_OUTPUT -p tcp -m multiport --dports 22,443 -j RETURN".into())
        );
        assert!(r.contains(&"-A ISTIO_OUTPUT -d 10.1.9.9/32 -j RETURN".into()));
        assert!(r.contains(&"-A ISTIO_OUTPUT -m owner --gid-owner 7 -j RETURN".into()));
        assert!(r.contains(&"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001".into()));
        let tail: Vec<&str> = r.iter().rev().take(2).map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "-A ISTIO_OUTPUT -j RETURN",
                "-A ISTIO_OUTPUT -d 10.1.0.0/16 -j ISTIO_REDIRECT"
            ]
        );
        // No inbound capture at all with an empty list.
        let r = plan(&["--inbound-ports", ""]).unwrap().rules();
        assert!(!r.iter().any(|l| l.starts_with("-A PREROUTING")));
    }

    #[test]
    fn many_excluded_ports_split_into_multiport_chunks() {
        let list: Vec<String> = (1..=20).map(|p| p.to_string()).collect();
        let r = plan(&["--exclude-inbound-ports", &list.join(",")])
            .unwrap()
            .rules();
        let returns: Vec<&String> = r
            .iter()
            .filter(|l| l.starts_with("-A ISTIO_INBOUND -p tcp -m multiport"))
            .collect();
        assert_eq!(returns.len(), 2);
        assert!(
            returns
                .iter()
                .all(|l| l.split(',').count() <= MULTIPORT_MAX)
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        for bad in [
            &["--inbound-ports", "http"][..],
            &["--exclude-outbound-ports", "70000"],
            &["--include-outbound-cidrs", "10.0.0.0/33"],
            &["--exclude-outbound-cidrs", "fd00::/8"],
            &["--include-outbound-cidrs", "nope"],
        ] {
            assert!(plan(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn installed_rules_are_found_and_removed() {
        let save = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n:ISTIO_OUTPUT - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A OUTPUT -d 10.0.0.1/32 -j RETURN\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\n-A OUTPUT -j OTHER\nCOMMIT\n";
        let i = Installed::parse(save);
        assert_eq!(
            i.jumps,
            [
                "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                "-A OUTPUT -p tcp -j ISTIO_OUTPUT"
            ]
        );
        assert_eq!(i.chains, ["ISTIO_INBOUND", "ISTIO_OUTPUT"]);
        assert_eq!(
            cleanup_input(&i).unwrap(),
            "*nat\n-D PREROUTING -p tcp -j ISTIO_INBOUND\n-D OUTPUT -p tcp -j ISTIO_OUTPUT\n-F ISTIO_INBOUND\n-F ISTIO_OUTPUT\n-X ISTIO_INBOUND\n-X ISTIO_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(cleanup_input(&Installed::default()), None);
    }
}
