//! `meshgate gateway --upgrade-socket PATH [--upgrade]`: taking over from the running
//! gateway, handing over to a successor (on SIGUSR2, or one started by hand), and telling
//! systemd which process serves. The socket exchange is in `meshgate::proxy::handoff`.
use anyhow::Context as _;
use meshgate::proxy::Gateway;
use meshgate::proxy::handoff::{
    HandOver, HandedSocket, Inherited, Predecessor, Relaunch, SocketKind, UpgradeListener,
    notify_systemd,
};
use meshgate::ratelimit::service::RateLimitSocket;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// How long a successor waits for its predecessor to confirm it stopped accepting.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// One gateway process's part in upgrades.
pub struct Upgrades {
    path: Option<PathBuf>,
    /// This process's executable and arguments, resolved at start.
    relaunch: Option<Relaunch>,
    /// The gateway being replaced, until this one serves.
    predecessor: Option<Predecessor>,
    /// Bound at start when not taking over (so a second gateway cannot), served once
    /// this one serves.
    listener: Option<UpgradeListener>,
    handed_over: watch::Sender<bool>,
    /// The rate-limit service's socket (`--ratelimit-redis`), handed over beside the
    /// gateway's.
    ratelimit: Option<RateLimitSocket>,
}

impl Upgrades {
    /// With `--upgrade`, connects to the running gateway and receives its sockets (an
    /// error if there is none: the caller exits, and that one keeps serving).
    pub fn start(
        path: Option<PathBuf>,
        upgrade: bool,
    ) -> anyhow::Result<(Upgrades, Option<Inherited>)> {
        let mut up = Upgrades {
            relaunch: None,
            predecessor: None,
            listener: None,
            handed_over: watch::channel(false).0,
            path: path.clone(),
            ratelimit: None,
        };
        let Some(path) = path else {
            return Ok((up, None));
        };
        up.relaunch = Some(Relaunch::current().context("resolving this executable's path")?);
        if upgrade {
            let (predecessor, inherited) = Predecessor::connect(&path)
                .context("--upgrade: taking the listening sockets over")?;
            tracing::info!(socket = %path.display(), sockets = inherited.len(), "took the listening sockets over; applying the configuration");
            up.predecessor = Some(predecessor);
            Ok((up, Some(inherited)))
        } else {
            up.listener = Some(
                UpgradeListener::bind(&path, false)
                    .with_context(|| format!("--upgrade-socket {}", path.display()))?,
            );
            Ok((up, None))
        }
    }

    /// The rate-limit service running beside the gateway: its socket is handed over
    /// with the gateway's, and it starts accepting when the gateway does.
    pub fn set_ratelimit(&mut self, socket: Option<RateLimitSocket>) {
        self.ratelimit = socket;
    }

    /// The gateway serves its first configuration: a successor tells its predecessor,
    /// waits until that one stopped accepting, starts accepting (listeners, admin,
    /// health, Prometheus, rate-limit service), tells systemd it is the service's main
    /// process now, closes the sockets it does not use and takes the upgrade socket
    /// over; then successors are served on it. An error (the predecessor gave this one
    /// up, or went away before it stopped accepting) means this gateway must not serve:
    /// the caller exits, having accepted nothing.
    pub fn serving(&mut self, gateway: &Gateway) -> anyhow::Result<()> {
        match self.predecessor.take() {
            Some(predecessor) => {
                predecessor.serving(RELEASE_TIMEOUT).context(
                    "the previous gateway did not release its sockets; this one does not serve",
                )?;
                // The rate-limit service first: the gateway's first requests call it.
                if let Some(rl) = &self.ratelimit {
                    rl.start_accepting();
                }
                gateway.serve_inherited();
                // Before the old process drains (it waits for the connection to close),
                // so systemd never sees the service's main process gone.
                notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
                drop(predecessor);
                tracing::info!("the previous gateway stopped accepting; it drains and exits");
                gateway.release_inherited();
                if let Some(path) = &self.path {
                    match UpgradeListener::bind(path, true) {
                        Ok(l) => self.listener = Some(l),
                        Err(e) => {
                            tracing::error!(error = %e, socket = %path.display(), "cannot listen for successors; this gateway cannot be upgraded without a restart")
                        }
                    }
                }
            }
            None => {
                gateway.serve_inherited();
                notify_systemd("READY=1");
            }
        }
        if let Some(listener) = self.listener.take() {
            let tx = self.handed_over.clone();
            let path = listener.path().display().to_string();
            let hand_over = WithRateLimit {
                gateway: gateway.hand_over(),
                ratelimit: self.ratelimit.clone(),
            };
            match listener.serve(hand_over, move || {
                let _ = tx.send(true);
            }) {
                Ok(_) => tracing::info!(socket = %path, "listening for a successor"),
                Err(e) => tracing::error!(error = %e, "cannot listen for successors"),
            }
        }
        Ok(())
    }

    /// Taking over failed before this gateway served: the previous one keeps serving.
    pub fn failed(&mut self, why: &anyhow::Error) {
        if let Some(p) = self.predecessor.take() {
            p.fail(&format!("{why:#}"));
        }
    }

    /// Changes to true once a successor serves (this gateway stopped accepting).
    pub fn handed_over(&self) -> watch::Receiver<bool> {
        self.handed_over.subscribe()
    }

    /// SIGUSR2: starts the successor, this executable with the same arguments plus
    /// `--upgrade`. If it fails this gateway keeps serving.
    pub fn start_successor(&self) {
        match &self.relaunch {
            None => {
                tracing::warn!("SIGUSR2 ignored: no --upgrade-socket to hand the sockets over on")
            }
            Some(r) => match r.spawn() {
                Ok(pid) => tracing::info!(successor = pid, "SIGUSR2: started the successor"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGUSR2: cannot start the successor; this gateway keeps serving")
                }
            },
        }
    }
}

/// The gateway's sockets and the rate-limit service's, handed over together.
struct WithRateLimit<H> {
    gateway: H,
    ratelimit: Option<RateLimitSocket>,
}

impl<H: HandOver> HandOver for WithRateLimit<H> {
    fn sockets(&self) -> std::io::Result<Vec<HandedSocket>> {
        let mut out = self.gateway.sockets()?;
        if let Some(rl) = &self.ratelimit {
            out.push(HandedSocket {
                kind: SocketKind::RateLimit,
                addr: rl.addr,
                socket: rl.duplicate()?,
            });
        }
        Ok(out)
    }

    /// The rate-limit service stops accepting too: its calls in flight finish, its
    /// clients are told to go away and reconnect (to the successor).
    fn stop_accepting(&self) {
        self.gateway.stop_accepting();
        if let Some(rl) = &self.ratelimit {
            rl.stop_accepting();
        }
    }
}
