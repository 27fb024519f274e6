//! Runs Envoy as the agent's child: started once the first workload certificate is
//! there, started again with capped exponential back-off whenever it exits on its own
//! (each restart counted and logged), stopped when the agent shuts down, and killed by
//! the kernel if the agent dies first.
//!
//! Envoy runs in its own process group, so a terminal's Ctrl-C reaches only the agent,
//! which then drains Envoy before stopping it. `PR_SET_PDEATHSIG` (SIGKILL) makes the
//! kernel kill Envoy when the agent dies, even by SIGKILL; it fires when the thread that
//! spawned Envoy ends, and that is one of the runtime's worker threads, which live as
//! long as the agent.
use super::envoy::EnvoyCommand;
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where the agent is in its life, as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Keep Envoy running.
    Running,
    /// Shutting down: Envoy drains and is not started again if it exits.
    Draining,
    /// Stop Envoy now.
    Stop,
}

/// What the supervisor did, for the status endpoint.
#[derive(Debug, Default)]
pub struct EnvoyCounters {
    /// Times Envoy was started, the first included.
    pub starts: AtomicU64,
    /// Times Envoy exited without being asked to.
    pub unexpected_exits: AtomicU64,
    /// The running Envoy's pid (0 while none runs).
    pub pid: AtomicI32,
    /// How the last Envoy ended.
    pub last_exit: Mutex<Option<String>>,
}

impl EnvoyCounters {
    /// Times Envoy was started again after it exited.
    pub fn restarts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed).saturating_sub(1)
    }

    pub fn running(&self) -> bool {
        self.pid.load(Ordering::Relaxed) != 0
    }
}

/// How Envoy is restarted and stopped.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// An Envoy that ran this long before exiting is restarted after the initial
    /// back-off again.
    pub backoff_reset_after: Duration,
    /// How long Envoy may take to exit after SIGTERM before it is killed.
    pub stop_timeout: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// Why Envoy could not be run.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{0}")]
    Command(#[from] super::envoy::CommandError),
    #[error("starting {program}: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
}

/// Starts Envoy and keeps it running.
pub struct Supervisor {
    pub command: EnvoyCommand,
    pub options: SupervisorOptions,
    pub counters: Arc<EnvoyCounters>,
}

impl Supervisor {
    fn spawn(&self) -> Result<tokio::process::Child, SupervisorError> {
        let args = self.command.args()?;
        let mut cmd = tokio::process::Command::new(&self.command.program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                #[cfg(target_os = "linux")]
                {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The agent died between fork and prctl: no signal will come.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                }
                let _ = parent;
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|error| SupervisorError::Spawn {
            program: self.command.program.display().to_string(),
            error,
        })?;
        let n = self.counters.starts.fetch_add(1, Ordering::Relaxed) + 1;
        let pid = child.id().map_or(0, |p| p as i32);
        self.counters.pid.store(pid, Ordering::Relaxed);
        tracing::info!(pid, start = n, program = %self.command.program.display(), args = ?args, "Envoy started");
        Ok(child)
    }

    /// Runs Envoy until the phase is [`Phase::Stop`] (or, once draining, until Envoy
    /// exits). Only a failure to start the first Envoy is an error; later ones are
    /// retried with back-off.
    pub async fn run(self, mut phase: watch::Receiver<Phase>) -> Result<(), SupervisorError> {
        let o = &self.options;
        let mut backoff = o.backoff_initial;
        let mut child = self.spawn()?;
        loop {
            let started = Instant::now();
            let exited = tokio::select! {
                status = child.wait() => Some(status),
                _ = wait_for(&mut phase, Phase::Stop) => None,
            };
            let Some(status) = exited else {
                self.stop(&mut child).await;
                return Ok(());
            };
            self.counters.pid.store(0, Ordering::Relaxed);
            let how = match &status {
                Ok(s) => s.to_string(),
                Err(e) => format!("waiting for it failed: {e}"),
            };
            *self
                .counters
                .last_exit
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(how.clone());
            if *phase.borrow() != Phase::Running {
                tracing::info!(status = %how, "Envoy exited");
                return Ok(());
            }
            self.counters
                .unexpected_exits
                .fetch_add(1, Ordering::Relaxed);
            if started.elapsed() >= o.backoff_reset_after {
                backoff = o.backoff_initial;
            }
            tracing::error!(status = %how, ran_for = ?started.elapsed(), restart_in = ?backoff, restarts = self.counters.restarts() + 1, "Envoy exited; starting it again");
            let woke = tokio::select! {
                _ = tokio::time::sleep(backoff) => true,
                _ = wait_for(&mut phase, Phase::Draining) => false,
            };
            if !woke {
                return Ok(());
            }
            backoff = (backoff * 2).min(o.backoff_max);
            child = loop {
                match self.spawn() {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::error!(error = %e, retry_in = ?backoff, "Envoy could not be started");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = wait_for(&mut phase, Phase::Draining) => return Ok(()),
                        }
                        backoff = (backoff * 2).min(o.backoff_max);
                    }
                }
            };
        }
    }

    /// SIGTERM, then SIGKILL if Envoy has not exited within the stop timeout.
    async fn stop(&self, child: &mut tokio::process::Child) {
        if let Some(pid) = child.id() {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let status = match tokio::time::timeout(self.options.stop_timeout, child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!(timeout = ?self.options.stop_timeout, "Envoy did not exit after SIGTERM; killing it");
                let _ = child.kill().await;
                child.wait().await
            }
        };
        self.counters.pid.store(0, Ordering::Relaxed);
        let how = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("waiting for it failed: {e}"),
        };
        tracing::info!(status = %how, "Envoy stopped");
        *self
            .counters
            .last_exit
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(how);
    }
}

/// Waits until the phase is `at_least` or later (Running < Draining < Stop).
async fn wait_for(phase: &mut watch::Receiver<Phase>, at_least: Phase) {
    let rank = |p: Phase| match p {
        Phase::Running => 0,
        Phase::Draining => 1,
        Phase::Stop => 2,
    };
    if phase
        .wait_for(|p| rank(*p) >= rank(at_least))
        .await
        .is_err()
    {
        // The agent is gone: nothing will change any more.
        std::future::pending::<()>().await;
    }
}
