//! Helpers for the privileged end-to-end tests: network namespaces the test creates and removes,
//! a peer that listens on the policy's ports, and a way to run userwall inside a namespace.
//!
//! Nothing here touches the host's own namespace: every nft and userwall call runs under
//! `ip netns exec` in a namespace a test made, and all traffic goes to loopback or to the peer
//! namespace at the other end of a veth pair.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// The bypass ports the peer listens on.
pub const PORTS: [u16; 4] = [53, 853, 445, 139];
/// Client and peer addresses on the veth pair.
pub const CLIENT_V4: &str = "10.77.0.1";
/// Peer IPv4.
pub const PEER_V4: &str = "10.77.0.2";
/// Client IPv6.
pub const CLIENT_V6: &str = "fd77::1";
/// Peer IPv6.
pub const PEER_V6: &str = "fd77::2";
/// A uid the tests sandbox; it has no passwd entry, so no account is created.
pub const SANDBOX_UID: u32 = 47001;
/// A second sandbox uid.
pub const SANDBOX_UID_2: u32 = 47003;
/// A uid that is never sandboxed.
pub const CONTROL_UID: u32 = 47002;

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Checks root, nft and ip (with netns and veth support). Missing ones fail the test under
/// CI=true and skip it elsewhere, saying which.
pub fn prerequisites() -> bool {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("root (run the suite as root: it creates network namespaces)".into());
        }
        if !works("nft", &["--version"]) {
            return Err("nft (apt-get install nftables)".into());
        }
        if !works("ip", &["-V"]) {
            return Err("ip (apt-get install iproute2)".into());
        }
        let name = format!("uwt{}-check", std::process::id());
        if !works("ip", &["netns", "add", &name]) {
            return Err("`ip netns add` (network namespaces)".into());
        }
        let veth = works(
            "ip",
            &[
                "-n", &name, "link", "add", "uwcheck0", "type", "veth", "peer", "name", "uwcheck1",
            ],
        );
        let _ = works("ip", &["netns", "del", &name]);
        if !veth {
            return Err("veth interfaces (the veth kernel module)".into());
        }
        Ok(())
    });
    match result {
        Ok(()) => true,
        Err(missing) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and a prerequisite of the end-to-end tests is missing: {missing}")
        }
        Err(missing) => {
            eprintln!("skipping: prerequisite missing: {missing}");
            false
        }
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with loopback up and unprivileged ping allowed for every gid (the
    /// sysctl is per namespace, so the host's setting is untouched).
    pub fn new(tag: &str) -> Netns {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("uwt{}-{n}-{tag}", std::process::id());
        ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns.sysctl("net.ipv4.ping_group_range", "0 2147483647");
        // No duplicate address detection: these links have exactly one neighbour each, and
        // DAD would hold every new IPv6 address back for about a second.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        ok(self.cmd("sysctl").args(["-qw", &format!("{key}={value}")]));
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs nft inside the namespace and returns stdout; panics on failure.
    pub fn nft(&self, args: &[&str]) -> String {
        String::from_utf8(ok(self.cmd("nft").args(args)).stdout).unwrap()
    }

    /// Runs nft with a script on stdin.
    pub fn nft_script(&self, script: &str) {
        use std::io::Write;
        let mut child = self
            .cmd("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -f failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `nft -s list ruleset` inside the namespace (stateless: counters left out, since traffic
    /// the test does not control can move them).
    pub fn ruleset(&self) -> String {
        self.nft(&["-s", "list", "ruleset"])
    }

    /// Whether our table exists here.
    pub fn has_our_table(&self) -> bool {
        self.nft(&["list", "tables"])
            .lines()
            .any(|l| l.trim() == "table inet userwall")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A client namespace (where userwall runs) and a peer namespace, joined by a veth pair with
/// IPv4 and IPv6 addresses.
pub struct Lab {
    /// Where userwall and the probe run.
    pub client: Netns,
    /// The other end.
    pub peer: Netns,
    /// A private state dir.
    pub state: tempfile::TempDir,
}

impl Lab {
    /// Builds the pair.
    pub fn new() -> Lab {
        let client = Netns::new("c");
        let peer = Netns::new("p");
        ok(Command::new("ip").args([
            "-n",
            &client.name,
            "link",
            "add",
            "uwc0",
            "type",
            "veth",
            "peer",
            "name",
            "uwp0",
            "netns",
            &peer.name,
        ]));
        for (ns, dev, v4, v6) in [
            (&client, "uwc0", CLIENT_V4, CLIENT_V6),
            (&peer, "uwp0", PEER_V4, PEER_V6),
        ] {
            ok(Command::new("ip").args([
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                dev,
            ]));
            ok(Command::new("ip").args([
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]));
            ok(Command::new("ip").args(["-n", &ns.name, "link", "set", dev, "up"]));
        }
        // A tentative IPv6 address makes neighbour discovery to the peer unreliable; with DAD
        // off none should be left, and this wait proves it rather than assuming it.
        for (ns, dev) in [(&client, "uwc0"), (&peer, "uwp0")] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let out =
                    ok(Command::new("ip").args(["-n", &ns.name, "-6", "addr", "show", "dev", dev]));
                if !String::from_utf8_lossy(&out.stdout).contains("tentative") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{dev} kept a tentative IPv6 address"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Lab {
            client,
            peer,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// The private unit dir.
    pub fn unit_dir(&self) -> PathBuf {
        self.state.path().join("units")
    }

    /// Runs userwall in the client namespace with our state dir.
    pub fn userwall(&self, args: &[&str]) -> Run {
        self.userwall_env(args, &[])
    }

    /// Same, with extra environment variables.
    pub fn userwall_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.client.cmd(env!("CARGO_BIN_EXE_userwall"));
        // The boot unit goes to a private directory too: tests never write the host's
        // /etc/systemd/system.
        cmd.arg("--state-dir").arg(self.state.path());
        cmd.arg("--unit-dir").arg(self.unit_dir()).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(run(&mut cmd))
    }

    /// The peer's ICMP and ICMPv6 echo requests received so far.
    pub fn peer_echo_requests(&self) -> (u64, u64) {
        let snmp =
            String::from_utf8(ok(self.peer.cmd("cat").arg("/proc/net/snmp")).stdout).unwrap();
        let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Icmp:")).collect();
        let names: Vec<&str> = lines[0].split_whitespace().collect();
        let values: Vec<&str> = lines[1].split_whitespace().collect();
        let pos = names.iter().position(|n| *n == "InEchos").unwrap();
        let v4 = values[pos].parse().unwrap();
        let snmp6 =
            String::from_utf8(ok(self.peer.cmd("cat").arg("/proc/net/snmp6")).stdout).unwrap();
        let v6 = snmp6
            .lines()
            .find_map(|l| l.strip_prefix("Icmp6InEchos"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap();
        (v4, v6)
    }
}

/// A finished userwall run.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// Listeners in the peer namespace on TCP and UDP for every port, counting what arrives.
pub struct Peer {
    hits: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    /// Starts listening inside `ns`: a thread joins the namespace and binds dual-stack sockets
    /// there (sockets stay in the namespace they were made in).
    pub fn listen(ns: &Netns) -> Peer {
        let hits = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let path = PathBuf::from("/run/netns").join(&ns.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (hits, stop) = (hits.clone(), stop.clone());
            std::thread::spawn(move || serve(&path, hits, stop, ready_tx))
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("peer listeners did not start");
        Peer {
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// Hits per `tcp/53`-style key.
    pub fn hits(&self) -> BTreeMap<String, u64> {
        // Give in-flight datagrams a moment to be read.
        std::thread::sleep(Duration::from_millis(100));
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    netns: &Path,
    hits: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let file = std::fs::File::open(netns).unwrap();
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for port in PORTS {
        let addr: SocketAddr = format!("[::]:{port}").parse().unwrap();
        let t = TcpListener::bind(addr).unwrap();
        t.set_nonblocking(true).unwrap();
        tcp.push((port, t));
        let u = UdpSocket::bind(addr).unwrap();
        u.set_nonblocking(true).unwrap();
        udp.push((port, u));
    }
    ready.send(()).unwrap();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        for (port, t) in &tcp {
            while let Ok((_conn, _)) = t.accept() {
                *hits
                    .lock()
                    .unwrap()
                    .entry(format!("tcp/{port}"))
                    .or_default() += 1;
            }
        }
        for (port, u) in &udp {
            while u.recv_from(&mut buf).is_ok() {
                *hits
                    .lock()
                    .unwrap()
                    .entry(format!("udp/{port}"))
                    .or_default() += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Serializes tests that add or remove accounts (useradd locks /etc/passwd).
pub fn account_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Deletes an account on drop, if this test created it.
pub struct AccountGuard(pub String);

impl Drop for AccountGuard {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
        let _ = Command::new("groupdel").arg(&self.0).output();
    }
}

/// One decoded counter data point: metric name, attributes as text, value.
pub type Point = (String, BTreeMap<String, String>, i64);

/// An OTLP/HTTP metrics receiver on 127.0.0.1 inside a namespace. It answers every POST with
/// 200 and decodes the protobuf body.
pub struct OtlpReceiver {
    /// `http://127.0.0.1:PORT/v1/metrics`.
    pub url: String,
    /// The port.
    pub port: u16,
    points: Arc<Mutex<Vec<Point>>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts listening in `ns`.
    pub fn start(ns: &Netns) -> OtlpReceiver {
        let points = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let path = PathBuf::from("/run/netns").join(&ns.name);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (points, requests, stop) = (points.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).unwrap();
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                listener.set_nonblocking(true).unwrap();
                tx.send(listener.local_addr().unwrap().port()).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            conn.set_nonblocking(false).unwrap();
                            if let Some(body) = read_http_post(conn) {
                                requests.fetch_add(1, Ordering::SeqCst);
                                points.lock().unwrap().extend(decode(&body));
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        let port = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver did not start");
        OtlpReceiver {
            url: format!("http://127.0.0.1:{port}/v1/metrics"),
            port,
            points,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Every data point received so far.
    pub fn points(&self) -> Vec<Point> {
        self.points.lock().unwrap().clone()
    }

    /// How many export requests arrived.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_http_post(mut conn: std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let (header_end, length) = loop {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..pos]).to_ascii_lowercase();
            assert!(head.starts_with("post "), "not a POST: {head}");
            assert!(
                !head.contains("content-encoding: gzip"),
                "unexpected compression"
            );
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .expect("content-length");
            break (pos + 4, length);
        }
    };
    while data.len() < header_end + length {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    Some(data[header_end..header_end + length].to_vec())
}

fn decode(body: &[u8]) -> Vec<Point> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value as Num};
    use prost::Message;
    let request = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics export");
    let mut out = Vec::new();
    for resource in request.resource_metrics {
        for scope in resource.scope_metrics {
            for metric in scope.metrics {
                let Some(Data::Sum(sum)) = metric.data else {
                    continue;
                };
                for point in sum.data_points {
                    let attrs = point
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                                Some(Any::StringValue(s)) => s,
                                Some(Any::IntValue(i)) => i.to_string(),
                                Some(Any::BoolValue(b)) => b.to_string(),
                                Some(Any::DoubleValue(d)) => d.to_string(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), value)
                        })
                        .collect();
                    let value = match point.value {
                        Some(Num::AsInt(i)) => i,
                        Some(Num::AsDouble(d)) => d as i64,
                        None => 0,
                    };
                    out.push((metric.name.clone(), attrs, value));
                }
            }
        }
    }
    out
}
