//! The whole system as separate OS processes, the way a person runs it: services started with
//! `bazaar serve`, `bazaar up` supervising them, the CLI talking to them, and real `kill -9`s.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bazaar");

/// A child process killed when dropped, so a failing test leaves nothing behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A run of `count` consecutive free ports.
fn free_port_range(count: u16) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + fastrand_port() % 30_000;
        let all_free =
            (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port range");
}

fn fastrand_port() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos()
        % 30_000) as u16
}

fn serve(service: &str, port: u16, data_dir: &std::path::Path, registry: u16) -> Proc {
    let child = Command::new(BIN)
        .args(["serve", service, "--port", &port.to_string(), "--data-dir"])
        .arg(data_dir.join(service))
        .env(
            "BAZAAR_REGISTRY_URL",
            format!("http://127.0.0.1:{registry}"),
        )
        .env("BAZAAR_HEARTBEAT_INTERVAL_MS", "200")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn bazaar serve");
    Proc(child)
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ready(port: u16) -> bool {
    http()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

fn routable_catalogs(registry: u16) -> usize {
    http()
        .get(format!(
            "http://127.0.0.1:{registry}/api/v1/services/catalog"
        ))
        .send()
        .and_then(|r| r.json::<Vec<serde_json::Value>>())
        .map(|list| list.iter().filter(|i| i["status"] == "up").count())
        .unwrap_or(0)
}

#[test]
fn gateway_survives_losing_catalog_instances_and_recovers() {
    let data = tempfile::tempdir().expect("tempdir");
    let (registry_port, catalog_a, catalog_b, gateway_port) =
        (free_port(), free_port(), free_port(), free_port());
    let _registry = serve("registry", registry_port, data.path(), registry_port);
    wait_until("registry ready", Duration::from_secs(30), || {
        ready(registry_port)
    });
    let mut first = serve("catalog", catalog_a, data.path(), registry_port);
    wait_until("first catalog ready", Duration::from_secs(30), || {
        ready(catalog_a)
    });
    // The second instance shares the first one's database (SQLite in WAL mode).
    let mut second = serve("catalog", catalog_b, data.path(), registry_port);
    let _gateway = serve("gateway", gateway_port, data.path(), registry_port);
    wait_until(
        "both catalogs and the gateway ready",
        Duration::from_secs(30),
        || ready(catalog_b) && ready(gateway_port) && routable_catalogs(registry_port) == 2,
    );

    let products = format!("http://127.0.0.1:{gateway_port}/api/v1/products");
    let client = http();
    let body: serde_json::Value = client
        .get(&products)
        .send()
        .expect("gateway answers")
        .json()
        .expect("json");
    assert!(body["total"].as_u64().unwrap_or_default() >= 50, "{body}");

    first.kill9();
    for i in 0..40 {
        let response = client.get(&products).send().expect("gateway answers");
        assert_eq!(
            response.status(),
            200,
            "request {i} after one instance died"
        );
    }

    second.kill9();
    let killed = Instant::now();
    let mut last = 0;
    while killed.elapsed() < Duration::from_secs(1) {
        let response = client.get(&products).send().expect("gateway answers");
        last = response.status().as_u16();
        if last == 503 {
            let problem: serde_json::Value = response.json().expect("problem json");
            assert_eq!(problem["status"], 503);
            break;
        }
    }
    assert_eq!(
        last, 503,
        "no healthy instance must answer 503 within one second"
    );
    assert!(killed.elapsed() < Duration::from_secs(1));

    let _revived = serve("catalog", catalog_a, data.path(), registry_port);
    wait_until(
        "served again after a catalog restarts",
        Duration::from_secs(30),
        || {
            client
                .get(&products)
                .send()
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        },
    );
}

/// Runs `bazaar up`, returning the process and a channel of its output lines.
fn up(data_dir: &std::path::Path, gateway: u16, base: u16) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--port",
            &gateway.to_string(),
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn bazaar up");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Proc(child), rx)
}

fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!(
                "no line containing {needle:?}; output so far:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn cli(args: &[&str]) -> (bool, String) {
    let output = Command::new(BIN).args(args).output().expect("run bazaar");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn up_supervises_restarts_persists_and_stops_cleanly() {
    let data = tempfile::tempdir().expect("tempdir");
    let gateway = free_port();
    let base = free_port_range(4);
    let registry = format!("http://127.0.0.1:{base}");
    let gateway_url = format!("http://127.0.0.1:{gateway}");

    let (mut proc, rx) = up(data.path(), gateway, base);
    let startup = wait_for_line(&rx, "bazaar is up", Duration::from_secs(90));
    let table = wait_for_line(&rx, "press Ctrl-C", Duration::from_secs(5));
    let printed = startup.join("\n") + &table.join("\n");
    for expected in ["registry", "catalog", "gateway", "/api/docs", &gateway_url] {
        assert!(
            printed.contains(expected),
            "`up` prints {expected}:\n{printed}"
        );
    }

    // The CLI through the gateway, and status from the registry.
    let (ok, out) = cli(&[
        "products",
        "list",
        "--gateway",
        &gateway_url,
        "--per-page",
        "5",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("page 1 of"), "{out}");
    let (ok, out) = cli(&["status", "--json", "--registry", &registry, "--strict"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status json");
    assert_eq!(status["healthy"], true, "{status}");
    let instances = status["instances"].as_array().expect("instances").clone();
    let services: Vec<&str> = instances
        .iter()
        .filter_map(|i| i["service"].as_str())
        .collect();
    for s in ["registry", "catalog", "gateway"] {
        assert!(services.contains(&s), "{services:?}");
    }

    // A write survives a restart of the whole system.
    let created = http()
        .post(format!("{gateway_url}/api/v1/products"))
        .json(&serde_json::json!({
            "sku": "TST-0001", "name": "Persistence Test Mug", "description": "A mug that outlives restarts.",
            "category": "kitchen", "price": {"amount_minor": 1234, "currency": "USD"},
            "weight_grams": 300, "images": [], "attributes": {}
        }))
        .send()
        .expect("create");
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // kill -9 the catalog: `up` restarts it and the gateway serves again.
    let catalog_pid = instances
        .iter()
        .find(|i| i["service"] == "catalog")
        .and_then(|i| i["metadata"]["pid"].as_str())
        .and_then(|p| p.parse::<i32>().ok())
        .expect("catalog pid");
    Command::new("kill")
        .args(["-9", &catalog_pid.to_string()])
        .status()
        .expect("kill");
    wait_for_line(&rx, "restarted", Duration::from_secs(20));
    wait_until("catalog served again", Duration::from_secs(30), || {
        http()
            .get(format!("{gateway_url}/api/v1/products/{id}"))
            .send()
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    });

    // SIGTERM stops everything: no child survives.
    let (_, out) = cli(&["status", "--json", "--registry", &registry]);
    let pids: Vec<i32> = serde_json::from_str::<serde_json::Value>(&out).expect("json")
        ["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["metadata"]["pid"].as_str()?.parse().ok())
        .collect();
    assert!(pids.len() >= 3);
    Command::new("kill")
        .args(["-TERM", &proc.pid().to_string()])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    while proc.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "up did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(proc.0.wait().expect("status").success(), "clean exit");
    for pid in &pids {
        assert!(!pid_alive(*pid), "child {pid} outlived `up`");
    }

    // Start again on the same data: the product is still there.
    let (_proc, rx) = up(data.path(), gateway, base);
    wait_for_line(&rx, "bazaar is up", Duration::from_secs(90));
    let response = http()
        .get(format!("{gateway_url}/api/v1/products/{id}"))
        .send()
        .expect("gateway");
    assert_eq!(response.status(), 200, "data survives a restart");
}

#[test]
fn up_names_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let data = tempfile::tempdir().expect("tempdir");
    let output = Command::new(BIN)
        .args(["up", "--port", &port.to_string(), "--data-dir"])
        .arg(data.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&port.to_string()) && stderr.contains("already in use"),
        "{stderr}"
    );
}

#[test]
fn serve_rejects_unknown_services_and_bad_configuration() {
    let (ok, out) = cli(&["serve", "nonsense"]);
    assert!(!ok);
    assert!(
        out.contains("unknown service") && out.contains("catalog"),
        "{out}"
    );

    let output = Command::new(BIN)
        .args(["serve", "catalog", "--port", "0"])
        .env("BAZAAR_CATALOG__MAX_BODY_BYTES", "lots")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("max_body_bytes"),
        "the error names the key: {stderr}"
    );
}
