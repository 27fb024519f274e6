//! A bounded ring of recent configuration errors (rejected files, snapshots that could not
//! be computed, NACKs), with their times, for the status page: the last few answer "what
//! went wrong lately" without a log search. Counting them is the metrics' job.
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// Errors kept; older ones are dropped.
pub const KEPT: usize = 50;

/// Longest detail kept, in bytes (a NACK can list thousands of resources).
const MAX_DETAIL: usize = 2048;

/// What kind of error an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// A configuration change that did not load or validate (the last good one serves).
    Config,
    /// A proxy's resources could not be computed (its last good snapshot serves).
    Snapshot,
    /// A proxy rejected a push.
    Nack,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Snapshot => "snapshot",
            ErrorKind::Nack => "NACK",
        }
    }
}

/// One error.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorEvent {
    #[serde(skip)]
    pub at: SystemTime,
    pub kind: ErrorKind,
    /// What it is about: a file, a proxy and type.
    pub subject: String,
    pub detail: String,
}

/// The ring; cheap to push to, never grows past [`KEPT`].
#[derive(Debug, Default)]
pub struct RecentErrors(Mutex<VecDeque<ErrorEvent>>);

impl RecentErrors {
    /// Records an error now.
    pub fn push(&self, kind: ErrorKind, subject: impl Into<String>, detail: &str) {
        let detail = super::stream::truncate(detail, MAX_DETAIL).to_string();
        let event = ErrorEvent {
            at: SystemTime::now(),
            kind,
            subject: subject.into(),
            detail,
        };
        let mut ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= KEPT {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// The errors kept, oldest first.
    pub fn all(&self) -> Vec<ErrorEvent> {
        let ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_and_bounds_details() {
        let ring = RecentErrors::default();
        for i in 0..KEPT + 5 {
            ring.push(ErrorKind::Config, format!("f{i}"), &"x".repeat(5000));
        }
        let all = ring.all();
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].subject, "f5");
        assert_eq!(all[KEPT - 1].subject, format!("f{}", KEPT + 4));
        assert!(all.iter().all(|e| e.detail.len() == MAX_DETAIL));
    }
}
