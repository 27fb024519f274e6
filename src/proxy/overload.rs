//! Overload protection, with the semantics of Envoy's overload manager and listener
//! limits:
//! - the per-listener connection limit (`--max-connections`) and the global one
//!   (`--max-connections-total`, Envoy's `global_downstream_max_connections` monitor):
//!   a connection over either is accepted and closed at once, and counted
//!   (`listener.<addr>.downstream_cx_overflow`, `..downstream_global_cx_overflow`);
//! - requests per downstream connection (`max_requests_per_connection`): the last
//!   response says `connection: close` (HTTP/1) or a GOAWAY follows it (HTTP/2);
//! - the heap monitor (`--max-heap`): the process's malloc heap in use is sampled on the
//!   control thread, and Envoy's actions switch on at fractions of the limit
//!   (`disable_http_keepalive`, `stop_accepting_requests`, `stop_accepting_connections`)
//!   and off again when memory is released.
//!
//! The hot path reads one atomic per check; nothing here takes a lock per request or per
//! connection (counters are resolved once per listener and per connection manager).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often the heap is sampled when `--max-heap` is set (Envoy's example
/// `refresh_interval` is 250 ms; a gateway's memory can climb fast under a burst).
pub const HEAP_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// `mallinfo2` walks malloc's free lists under each arena's lock, so its cost grows with
/// fragmentation (measured: 1 µs with 500 free chunks, 2.7 ms with 50 000, 113 ms with
/// 500 000). The next sample waits at least this many times the last one took, so that
/// sampling holds the arenas at most 1% of the time.
const SAMPLE_COST_FACTOR: u32 = 100;
/// How often memory is sampled for `/stats` alone (no `--max-heap`).
const STATS_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Envoy's names of the heap monitor and of the actions it drives (stat names
/// `overload.<name>.*`, as Envoy's dashboards expect).
pub const HEAP_MONITOR: &str = "envoy.resource_monitors.fixed_heap";
pub const DISABLE_KEEPALIVE: &str = "envoy.overload_actions.disable_http_keepalive";
pub const STOP_ACCEPTING_REQUESTS: &str = "envoy.overload_actions.stop_accepting_requests";
pub const STOP_ACCEPTING_CONNECTIONS: &str = "envoy.overload_actions.stop_accepting_connections";

/// Fractions of `--max-heap` at which each action starts (Envoy's threshold triggers:
/// the action is saturated while pressure >= its value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeapThresholds {
    pub disable_keepalive: f64,
    pub stop_accepting_requests: f64,
    pub stop_accepting_connections: f64,
}

impl Default for HeapThresholds {
    /// Envoy's documented example (keep-alive off at 0.92, requests refused at 0.95),
    /// and connections left in the backlog only near the limit, so that clients get a
    /// 503 that says why for as long as possible.
    fn default() -> Self {
        HeapThresholds {
            disable_keepalive: 0.92,
            stop_accepting_requests: 0.95,
            stop_accepting_connections: 0.98,
        }
    }
}

impl HeapThresholds {
    /// Each threshold must be a fraction in (0, 1].
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("disable keep-alive", self.disable_keepalive),
            ("stop accepting requests", self.stop_accepting_requests),
            (
                "stop accepting connections",
                self.stop_accepting_connections,
            ),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(format!(
                    "the {name} threshold must be a fraction of --max-heap in (0, 1], not {v}"
                ));
            }
        }
        Ok(())
    }
}

/// One overload action's state: 0 (inactive) or 100 (saturated), as Envoy's
/// `scale_percent` with threshold triggers.
#[derive(Debug)]
struct Action {
    name: &'static str,
    threshold: f64,
    scale_percent: AtomicU8,
}

impl Action {
    fn new(name: &'static str, threshold: f64) -> Action {
        Action {
            name,
            threshold,
            scale_percent: AtomicU8::new(0),
        }
    }

    #[inline]
    fn saturated(&self) -> bool {
        self.scale_percent.load(Ordering::Relaxed) >= 100
    }

    /// Applies a new pressure; returns whether the state changed.
    fn update(&self, pressure: f64) -> bool {
        let v = if pressure >= self.threshold { 100 } else { 0 };
        self.scale_percent.swap(v, Ordering::Relaxed) != v
    }
}

/// The memory figures of the process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemorySample {
    /// Heap bytes in use by the program (glibc: `mallinfo2` `uordblks + hblkhd`; without
    /// glibc: the resident set size).
    pub allocated: u64,
    /// Heap bytes obtained from the system (in use or free in malloc's arenas).
    pub heap_size: u64,
    /// Resident set size (`/proc/self/statm`).
    pub resident: u64,
}

/// Samples the process's memory. Cheap: one `mallinfo2` call (it walks malloc's free
/// lists under each arena's lock) and one read of `/proc/self/statm`.
pub fn sample_memory() -> MemorySample {
    let resident = resident_bytes().unwrap_or(0);
    match malloc_heap() {
        Some((allocated, heap_size)) => MemorySample {
            allocated,
            heap_size,
            resident,
        },
        None => MemorySample {
            allocated: resident,
            heap_size: resident,
            resident,
        },
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_heap() -> Option<(u64, u64)> {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; glibc
    // locks each arena while it sums it.
    let m = unsafe { libc::mallinfo2() };
    let in_use = (m.uordblks as u64).saturating_add(m.hblkhd as u64);
    let obtained = (m.arena as u64).saturating_add(m.hblkhd as u64);
    Some((in_use, obtained))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_heap() -> Option<(u64, u64)> {
    None
}

fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * if page > 0 { page as u64 } else { 4096 })
}

/// Counters of one listener, by Envoy's stat name `listener.<addr>.*`.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Closed at accept: the listener's connection limit was reached.
    pub downstream_cx_overflow: AtomicU64,
    /// Closed at accept: the global connection limit was reached.
    pub downstream_global_cx_overflow: AtomicU64,
}

/// Counters of one HTTP connection manager, by Envoy's stat name `http.<prefix>.*`.
#[derive(Debug, Default)]
pub struct HcmCounters {
    /// Requests answered 503 by `stop_accepting_requests`.
    pub downstream_rq_overload_close: AtomicU64,
    /// Connections whose last allowed request arrived.
    pub downstream_cx_max_requests_reached: AtomicU64,
    /// Connections closed after a response by `disable_http_keepalive`.
    pub downstream_cx_overload_disable_keepalive: AtomicU64,
}

/// The gateway's overload state, shared by workers, the control thread and the admin
/// servers.
pub struct Overload {
    global_limit: Option<usize>,
    global_active: AtomicUsize,
    /// `--max-requests-per-connection`: for connection managers that do not set
    /// `common_http_protocol_options.max_requests_per_connection` themselves.
    pub default_max_requests_per_connection: Option<u32>,
    max_heap: Option<u64>,
    /// The cgroup memory limit `--max-heap P%` was taken from, for `/stats`.
    memory_limit: Option<u64>,
    memory: [AtomicU64; 3],
    /// Heap pressure in parts per million of `--max-heap`.
    pressure_ppm: AtomicU64,
    actions: [Action; 3],
    accept_paused: watch::Sender<bool>,
    sampled: AtomicBool,
    /// How long the last sample took (microseconds).
    sample_us: AtomicU64,
    listeners: Mutex<BTreeMap<String, Arc<ListenerCounters>>>,
    hcms: Mutex<BTreeMap<String, Arc<HcmCounters>>>,
}

const KEEPALIVE: usize = 0;
const REQUESTS: usize = 1;
const CONNECTIONS: usize = 2;

impl Overload {
    pub fn new(
        global_limit: Option<usize>,
        default_max_requests_per_connection: Option<u32>,
        max_heap: Option<u64>,
        thresholds: HeapThresholds,
    ) -> Overload {
        Overload {
            global_limit,
            global_active: AtomicUsize::new(0),
            default_max_requests_per_connection,
            max_heap: max_heap.filter(|m| *m > 0),
            memory_limit: None,
            memory: Default::default(),
            pressure_ppm: AtomicU64::new(0),
            actions: [
                Action::new(DISABLE_KEEPALIVE, thresholds.disable_keepalive),
                Action::new(STOP_ACCEPTING_REQUESTS, thresholds.stop_accepting_requests),
                Action::new(
                    STOP_ACCEPTING_CONNECTIONS,
                    thresholds.stop_accepting_connections,
                ),
            ],
            accept_paused: watch::channel(false).0,
            sampled: AtomicBool::new(false),
            sample_us: AtomicU64::new(0),
            listeners: Mutex::new(BTreeMap::new()),
            hcms: Mutex::new(BTreeMap::new()),
        }
    }

    /// The cgroup memory limit `--max-heap` was a percentage of, shown in `/stats` as
    /// `meshgate.memory_limit_bytes`.
    pub fn with_memory_limit(mut self, limit: Option<u64>) -> Overload {
        self.memory_limit = limit;
        self
    }

    /// `stop_accepting_requests` is saturated: new requests get 503 `envoy overloaded`.
    #[inline]
    pub fn stop_accepting_requests(&self) -> bool {
        self.actions[REQUESTS].saturated()
    }

    /// `disable_http_keepalive` is saturated: connections close after their response.
    #[inline]
    pub fn disable_keepalive(&self) -> bool {
        self.actions[KEEPALIVE].saturated()
    }

    /// Changes to true while `stop_accepting_connections` is saturated: accept loops
    /// leave new connections in the kernel's backlog.
    pub fn accept_paused(&self) -> watch::Receiver<bool> {
        self.accept_paused.subscribe()
    }

    /// The counters of the listener whose stats are named `stat_name` (made once per
    /// accept loop).
    pub fn listener_counters(&self, stat_name: &str) -> Arc<ListenerCounters> {
        let mut m = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(stat_name.to_string()).or_default().clone()
    }

    /// The counters of the connection manager with `stat_prefix`.
    pub fn hcm_counters(&self, stat_prefix: &str) -> Arc<HcmCounters> {
        let mut m = self.hcms.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(stat_prefix.to_string()).or_default().clone()
    }

    /// Admits an accepted connection against the listener's and the global limits, as
    /// Envoy does: the global limit first (unless the listener ignores it), then the
    /// listener's. `None`: close the connection (it is counted).
    pub fn admit(
        self: &Arc<Self>,
        listener_conns: &Arc<AtomicUsize>,
        max_connections: usize,
        ignore_global: bool,
        counters: &ListenerCounters,
    ) -> Option<Admitted> {
        let global = match self.global_limit {
            None => false,
            Some(limit) => {
                // Connections of listeners that ignore the limit still count towards it.
                let before = self.global_active.fetch_add(1, Ordering::Relaxed);
                if before >= limit && !ignore_global {
                    self.global_active.fetch_sub(1, Ordering::Relaxed);
                    counters
                        .downstream_global_cx_overflow
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                true
            }
        };
        let before = listener_conns.fetch_add(1, Ordering::Relaxed);
        if before >= max_connections {
            listener_conns.fetch_sub(1, Ordering::Relaxed);
            if global {
                self.global_active.fetch_sub(1, Ordering::Relaxed);
            }
            counters
                .downstream_cx_overflow
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted {
            listener: listener_conns.clone(),
            global: global.then(|| self.clone()),
        })
    }

    /// Takes a memory sample and updates the actions. Returns the sample.
    pub fn sample(&self) -> MemorySample {
        let start = std::time::Instant::now();
        let s = sample_memory();
        self.sample_us
            .store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.apply_sample(s);
        s
    }

    /// How long to wait before the next sample: `every`, stretched when sampling got
    /// expensive (see [`SAMPLE_COST_FACTOR`]).
    fn next_sample_in(&self, every: Duration) -> Duration {
        let cost = Duration::from_micros(self.sample_us.load(Ordering::Relaxed));
        every.max(cost * SAMPLE_COST_FACTOR)
    }

    fn apply_sample(&self, s: MemorySample) {
        self.memory[0].store(s.allocated, Ordering::Relaxed);
        self.memory[1].store(s.heap_size, Ordering::Relaxed);
        self.memory[2].store(s.resident, Ordering::Relaxed);
        self.sampled.store(true, Ordering::Relaxed);
        let Some(max) = self.max_heap else { return };
        let pressure = s.allocated as f64 / max as f64;
        self.pressure_ppm
            .store((pressure * 1e6) as u64, Ordering::Relaxed);
        for a in &self.actions {
            if a.update(pressure) {
                tracing::warn!(
                    action = a.name,
                    active = a.saturated(),
                    heap_allocated = s.allocated,
                    resident = s.resident,
                    max_heap = max,
                    "overload action {}",
                    if a.saturated() { "on" } else { "off" }
                );
            }
        }
        let paused = self.actions[CONNECTIONS].saturated();
        self.accept_paused.send_if_modified(|p| {
            let changed = *p != paused;
            *p = paused;
            changed
        });
    }

    /// Samples memory on `rt` (the control thread) for as long as the runtime runs:
    /// every [`HEAP_SAMPLE_INTERVAL`] with `--max-heap`, else every second for `/stats`.
    pub fn spawn_monitor(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let me = self.clone();
        let every = if self.max_heap.is_some() {
            HEAP_SAMPLE_INTERVAL
        } else {
            STATS_SAMPLE_INTERVAL
        };
        rt.spawn(async move {
            loop {
                me.sample();
                tokio::time::sleep(me.next_sample_in(every)).await;
            }
        });
    }

    /// The gauges and counters for `/stats` (Envoy's names).
    pub fn stats(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        if !self.sampled.load(Ordering::Relaxed) {
            self.apply_sample(sample_memory());
        }
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push(("server.memory_allocated".into(), g(&self.memory[0])));
        out.push(("server.memory_heap_size".into(), g(&self.memory[1])));
        out.push(("server.memory_physical_size".into(), g(&self.memory[2])));
        out.push((
            "meshgate.memory_sample_duration_us".into(),
            g(&self.sample_us),
        ));
        if let Some(max) = self.max_heap {
            out.push((format!("overload.{HEAP_MONITOR}.max_heap_size_bytes"), max));
            if let Some(limit) = self.memory_limit {
                out.push(("meshgate.memory_limit_bytes".into(), limit));
            }
            out.push((
                format!("overload.{HEAP_MONITOR}.pressure"),
                g(&self.pressure_ppm) / 10_000,
            ));
            for a in &self.actions {
                let v = a.scale_percent.load(Ordering::Relaxed) as u64;
                out.push((format!("overload.{}.active", a.name), (v >= 100) as u64));
                out.push((format!("overload.{}.scale_percent", a.name), v));
            }
        }
        if let Some(limit) = self.global_limit {
            out.push((
                "overload.envoy.resource_monitors.global_downstream_max_connections.active_connections"
                    .into(),
                self.global_active.load(Ordering::Relaxed) as u64,
            ));
            out.push((
                "overload.envoy.resource_monitors.global_downstream_max_connections.max_active_downstream_connections"
                    .into(),
                limit as u64,
            ));
        }
        for (name, c) in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.push((
                format!("listener.{name}.downstream_cx_overflow"),
                g(&c.downstream_cx_overflow),
            ));
            out.push((
                format!("listener.{name}.downstream_global_cx_overflow"),
                g(&c.downstream_global_cx_overflow),
            ));
        }
        for (prefix, c) in self.hcms.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push((
                format!("http.{prefix}.downstream_rq_overload_close"),
                g(&c.downstream_rq_overload_close),
            ));
            out.push((
                format!("http.{prefix}.downstream_cx_max_requests_reached"),
                g(&c.downstream_cx_max_requests_reached),
            ));
            out.push((
                format!("http.{prefix}.downstream_cx_overload_disable_keepalive"),
                g(&c.downstream_cx_overload_disable_keepalive),
            ));
        }
        out
    }

    /// The same in Prometheus' text format, with the labels Envoy's tag extraction
    /// gives (`envoy_listener_address`, `envoy_http_conn_manager_prefix`).
    pub fn prometheus(&self, out: &mut String) {
        if !self.sampled.load(Ordering::Relaxed) {
            self.apply_sample(sample_memory());
        }
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |out: &mut String, name: &str, v: u64| {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
        };
        gauge(out, "envoy_server_memory_allocated", g(&self.memory[0]));
        gauge(out, "envoy_server_memory_heap_size", g(&self.memory[1]));
        gauge(out, "envoy_server_memory_physical_size", g(&self.memory[2]));
        if self.max_heap.is_some() {
            let monitor = HEAP_MONITOR.replace('.', "_");
            gauge(
                out,
                &format!("envoy_overload_{monitor}_pressure"),
                g(&self.pressure_ppm) / 10_000,
            );
            for a in &self.actions {
                let v = a.scale_percent.load(Ordering::Relaxed) as u64;
                let name = a.name.replace('.', "_");
                gauge(
                    out,
                    &format!("envoy_overload_{name}_active"),
                    (v >= 100) as u64,
                );
                gauge(out, &format!("envoy_overload_{name}_scale_percent"), v);
            }
        }
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        type Field<T> = fn(&T) -> &AtomicU64;
        let listener_fields: [(&str, Field<ListenerCounters>); 2] = [
            ("downstream_cx_overflow", |c| &c.downstream_cx_overflow),
            ("downstream_global_cx_overflow", |c| {
                &c.downstream_global_cx_overflow
            }),
        ];
        for (stat, field) in listener_fields {
            if listeners.is_empty() {
                break;
            }
            let _ = writeln!(out, "# TYPE envoy_listener_{stat} counter");
            for (addr, c) in listeners.iter() {
                let _ = writeln!(
                    out,
                    "envoy_listener_{stat}{{envoy_listener_address=\"{addr}\"}} {}",
                    g(field(c))
                );
            }
        }
        drop(listeners);
        let hcms = self.hcms.lock().unwrap_or_else(|e| e.into_inner());
        let hcm_fields: [(&str, Field<HcmCounters>); 3] = [
            ("downstream_rq_overload_close", |c| {
                &c.downstream_rq_overload_close
            }),
            ("downstream_cx_max_requests_reached", |c| {
                &c.downstream_cx_max_requests_reached
            }),
            ("downstream_cx_overload_disable_keepalive", |c| {
                &c.downstream_cx_overload_disable_keepalive
            }),
        ];
        for (stat, field) in hcm_fields {
            if hcms.is_empty() {
                break;
            }
            let _ = writeln!(out, "# TYPE envoy_http_{stat} counter");
            for (prefix, c) in hcms.iter() {
                let _ = writeln!(
                    out,
                    "envoy_http_{stat}{{envoy_http_conn_manager_prefix=\"{prefix}\"}} {}",
                    g(field(c))
                );
            }
        }
    }
}

/// An admitted connection's place under the limits; dropped when it closes.
pub struct Admitted {
    listener: Arc<AtomicUsize>,
    global: Option<Arc<Overload>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.listener.fetch_sub(1, Ordering::Relaxed);
        if let Some(o) = &self.global {
            o.global_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Envoy's stat name of a listener: its `stat_prefix`, else its address with `_` before
/// the port (`127.0.0.1_8080`, `[::]_443` as `::_443`).
pub fn listener_stat_name(stat_prefix: &str, addr: std::net::SocketAddr) -> String {
    if !stat_prefix.is_empty() {
        return stat_prefix.to_string();
    }
    format!("{}_{}", addr.ip(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overload(max: u64, t: HeapThresholds) -> Overload {
        Overload::new(None, None, Some(max), t)
    }

    fn sample(allocated: u64) -> MemorySample {
        MemorySample {
            allocated,
            heap_size: allocated,
            resident: allocated,
        }
    }

    #[test]
    fn actions_follow_pressure_up_and_down() {
        let o = overload(1000, HeapThresholds::default());
        let paused = o.accept_paused();
        // (heap in use, keep-alive off, requests refused, connections paused)
        let cases = [
            (100, false, false, false),
            (919, false, false, false),
            (920, true, false, false),
            (949, true, false, false),
            (950, true, true, false),
            (979, true, true, false),
            (980, true, true, true),
            (1500, true, true, true),
            (949, true, false, false),
            (10, false, false, false),
        ];
        for (heap, keepalive, requests, connections) in cases {
            o.apply_sample(sample(heap));
            assert_eq!(o.disable_keepalive(), keepalive, "heap {heap}");
            assert_eq!(o.stop_accepting_requests(), requests, "heap {heap}");
            assert_eq!(*paused.borrow(), connections, "heap {heap}");
        }
    }

    #[test]
    fn stats_show_state_and_memory() {
        let o = overload(2000, HeapThresholds::default());
        o.apply_sample(MemorySample {
            allocated: 1900,
            heap_size: 2500,
            resident: 4000,
        });
        let stats: BTreeMap<String, u64> = o.stats().into_iter().collect();
        assert_eq!(stats["server.memory_allocated"], 1900);
        assert_eq!(stats["server.memory_heap_size"], 2500);
        assert_eq!(stats["server.memory_physical_size"], 4000);
        assert_eq!(
            stats["overload.envoy.resource_monitors.fixed_heap.pressure"],
            95
        );
        assert_eq!(
            stats["overload.envoy.overload_actions.stop_accepting_requests.active"],
            1
        );
        assert_eq!(
            stats["overload.envoy.overload_actions.stop_accepting_requests.scale_percent"],
            100
        );
        assert_eq!(
            stats["overload.envoy.overload_actions.stop_accepting_connections.active"],
            0
        );
        let mut prom = String::new();
        o.prometheus(&mut prom);
        assert!(
            prom.contains(
                "envoy_overload_envoy_overload_actions_disable_http_keepalive_active 1\n"
            )
        );
        assert!(prom.contains("envoy_server_memory_allocated 1900\n"));
    }

    #[test]
    fn thresholds_are_fractions() {
        assert!(HeapThresholds::default().validate().is_ok());
        for bad in [0.0, -0.1, 1.01, f64::NAN] {
            let t = HeapThresholds {
                stop_accepting_requests: bad,
                ..Default::default()
            };
            assert!(t.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_admit_and_release() {
        let o = Arc::new(Overload::new(
            Some(3),
            None,
            None,
            HeapThresholds::default(),
        ));
        let a = Arc::new(AtomicUsize::new(0));
        let b = Arc::new(AtomicUsize::new(0));
        let ca = o.listener_counters("a");
        let cb = o.listener_counters("b");
        // Listener a allows 2, the gateway 3.
        let a1 = o.admit(&a, 2, false, &ca).expect("first");
        let a2 = o.admit(&a, 2, false, &ca).expect("second");
        assert!(o.admit(&a, 2, false, &ca).is_none());
        assert_eq!(ca.downstream_cx_overflow.load(Ordering::Relaxed), 1);
        let b1 = o.admit(&b, 10, false, &cb).expect("third overall");
        assert!(o.admit(&b, 10, false, &cb).is_none());
        assert_eq!(cb.downstream_global_cx_overflow.load(Ordering::Relaxed), 1);
        // A listener that ignores the global limit is admitted, and counted.
        let b2 = o
            .admit(&b, 10, true, &cb)
            .expect("ignores the global limit");
        assert_eq!(o.global_active.load(Ordering::Relaxed), 4);
        drop((a1, b1, b2));
        assert_eq!(a.load(Ordering::Relaxed), 1);
        assert_eq!(o.global_active.load(Ordering::Relaxed), 1);
        assert!(o.admit(&b, 10, false, &cb).is_some());
        drop(a2);
    }

    #[test]
    fn the_heap_measure_falls_when_memory_is_released() {
        let before = sample_memory().allocated;
        let mut hold: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 256 * 1024]).collect();
        let during = sample_memory().allocated;
        assert!(
            during >= before + 15 * 1024 * 1024,
            "{before} -> {during} with 16 MiB held"
        );
        hold.clear();
        hold.shrink_to_fit();
        let after = sample_memory().allocated;
        assert!(
            after + 15 * 1024 * 1024 <= during,
            "{during} -> {after} after releasing 16 MiB"
        );
    }

    #[test]
    fn a_sample_is_cheap_on_a_fragmented_heap() {
        // 100k small blocks with every other one freed: malloc's free lists, which
        // mallinfo2 walks, are long.
        let mut blocks: Vec<Option<Vec<u8>>> = (0..100_000)
            .map(|i| Some(vec![0u8; 64 + i % 512]))
            .collect();
        for b in blocks.iter_mut().step_by(2) {
            *b = None;
        }
        let start = std::time::Instant::now();
        for _ in 0..20 {
            std::hint::black_box(sample_memory());
        }
        let each = start.elapsed() / 20;
        eprintln!("one memory sample: {each:?}");
        assert!(each < Duration::from_millis(20), "a sample took {each:?}");
        drop(blocks);
        // An expensive sample spaces the next ones out.
        let o = overload(1000, HeapThresholds::default());
        o.sample_us.store(5_000, Ordering::Relaxed);
        assert_eq!(
            o.next_sample_in(HEAP_SAMPLE_INTERVAL),
            Duration::from_millis(500)
        );
        o.sample_us.store(50, Ordering::Relaxed);
        assert_eq!(o.next_sample_in(HEAP_SAMPLE_INTERVAL), HEAP_SAMPLE_INTERVAL);
    }

    #[test]
    fn listener_stat_names_are_envoys() {
        let a: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(listener_stat_name("", a), "127.0.0.1_8080");
        assert_eq!(listener_stat_name("public", a), "public");
        let v6: std::net::SocketAddr = "[::]:443".parse().unwrap();
        assert_eq!(listener_stat_name("", v6), "::_443");
    }
}
