//! A tiny authoritative DNS server on 127.0.0.1 (UDP) whose answers, TTLs and failures a
//! test changes while it runs, and which counts the queries it gets per name.
use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server answers every query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer from the zone (NXDOMAIN for unknown names).
    Answer,
    /// SERVFAIL to everything.
    ServFail,
    /// No answer at all (the client times out).
    Silent,
}

#[derive(Default)]
struct Zone {
    /// Lower-case name without the trailing dot -> (addresses, TTL).
    records: HashMap<String, (Vec<IpAddr>, u32)>,
    /// Queries seen per lower-case name.
    queries: HashMap<String, usize>,
    mode: Option<Mode>,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Starts the server on a free UDP port of 127.0.0.1.
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("local addr");
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (z, s) = (zone.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(socket, z, s));
        DnsServer {
            addr,
            zone,
            stop,
            thread: Some(thread),
        }
    }

    /// Sets `name`'s addresses (A and AAAA records) and their TTL.
    pub fn set(&self, name: &str, addrs: &[&str], ttl: u32) {
        let addrs = addrs.iter().map(|a| a.parse().expect("IP")).collect();
        self.zone
            .lock()
            .unwrap()
            .records
            .insert(key(name), (addrs, ttl));
    }

    pub fn mode(&self, mode: Mode) {
        self.zone.lock().unwrap().mode = Some(mode);
    }

    /// Queries received for `name` so far (any record type).
    pub fn queries(&self, name: &str) -> usize {
        self.zone
            .lock()
            .unwrap()
            .queries
            .get(&key(name))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(reply) = answer(&request, &zone) else {
            continue;
        };
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

fn answer(request: &Message, zone: &Mutex<Zone>) -> Option<Message> {
    let mut zone = zone.lock().unwrap();
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let query = request.queries.first()?.clone();
    *zone
        .queries
        .entry(key(&query.name().to_ascii()))
        .or_default() += 1;
    reply.add_query(query.clone());
    match zone.mode.unwrap_or(Mode::Answer) {
        Mode::Silent => return None,
        Mode::ServFail => {
            reply.metadata.response_code = ResponseCode::ServFail;
            return Some(reply);
        }
        Mode::Answer => {}
    }
    let name: Name = query.name().clone();
    match zone.records.get(&key(&name.to_ascii())) {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some((addrs, ttl)) => {
            for ip in addrs {
                let rdata = match (ip, query.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(name.clone(), *ttl, rdata));
            }
        }
    }
    Some(reply)
}
