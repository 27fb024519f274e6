//! `meshgate gateway --upgrade-socket PATH [--upgrade]`: taking over from the running
//! gateway, handing over to a successor (on SIGUSR2, or one started by hand), and telling
//! systemd which process serves. The socket exchange is in `meshgate::proxy::handoff`.
use anyhow::Context as _;
use meshgate::proxy::Gateway;
use meshgate::proxy::handoff::{Inherited, Predecessor, Relaunch, UpgradeListener, notify_systemd};
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

    /// The gateway serves its first configuration: a successor tells systemd it is the
    /// service's main process now and its predecessor to stop accepting, closes the
    /// sockets it does not use and takes the upgrade socket over; then successors are
    /// served on it.
    pub fn serving(&mut self, gateway: &Gateway) {
        gateway.serve_inherited();
        match self.predecessor.take() {
            Some(predecessor) => {
                // Before the old process exits, so systemd never sees the service's main
                // process gone.
                notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
                match predecessor.serving(RELEASE_TIMEOUT) {
                    Ok(()) => tracing::info!(
                        "the previous gateway stopped accepting; it drains and exits"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "the previous gateway did not confirm it stopped accepting")
                    }
                }
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
            None => notify_systemd("READY=1"),
        }
        if let Some(listener) = self.listener.take() {
            let tx = self.handed_over.clone();
            let path = listener.path().display().to_string();
            match listener.serve(gateway.hand_over(), move || {
                let _ = tx.send(true);
            }) {
                Ok(_) => tracing::info!(socket = %path, "listening for a successor"),
                Err(e) => tracing::error!(error = %e, "cannot listen for successors"),
            }
        }
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
