//! The whole system as separate OS processes, the way a person runs it: services started with
//! `bazaar serve`, `bazaar up` supervising them, the CLI talking to them, and real `kill -9`s.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

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

#[test]
fn up_supervises_restarts_persists_and_stops_cleanly() {
    let data = tempfile::tempdir().expect("tempdir");
    let gateway = free_port();
    let base = free_port_range(16);
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
    for s in ["registry", "identity", "catalog", "developer", "gateway"] {
        assert!(services.contains(&s), "{services:?}");
    }

    // A write, by an administrator signed in through the identity provider, survives a restart
    // of the whole system.
    let admin = user_token(&gateway_url, DEMO_ADMIN.0, DEMO_ADMIN.1);
    let created = http()
        .post(format!("{gateway_url}/api/v1/products"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({
            "sku": "TST-0001", "name": "Persistence Test Mug", "description": "A mug that outlives restarts.",
            "category": "kitchen", "price": {"amount_minor": 1234, "currency": "USD"},
            "weight_grams": 300, "images": [], "attributes": {}
        }))
        .send()
        .expect("create");
    let status = created.status();
    let created: serde_json::Value = created.json().expect("json");
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();

    // The CLI's writes carry a token: refused without one, accepted with the admin's.
    let update = data.path().join("mug.json");
    std::fs::write(
        &update,
        serde_json::json!({
            "sku": "TST-0001", "name": "Persistence Test Mug, renamed", "description": "Still here.",
            "category": "kitchen", "price": {"amount_minor": 1300, "currency": "USD"},
            "weight_grams": 300, "images": [], "attributes": {}
        })
        .to_string(),
    )
    .expect("write json");
    let update_path = update.to_string_lossy().into_owned();
    let (ok, out) = cli(&[
        "products",
        "update",
        &id,
        &update_path,
        "--gateway",
        &gateway_url,
    ]);
    assert!(!ok && out.contains("not signed in"), "{out}");
    let (ok, out) = cli(&[
        "products",
        "update",
        &id,
        &update_path,
        "--gateway",
        &gateway_url,
        "--token",
        &admin,
    ]);
    assert!(ok && out.contains("renamed"), "{out}");

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
    // Each process, the restarted catalog included, is kept on one CPU, and they are spread
    // over the CPUs `up` may use (read from /proc, as the kernel applies it).
    // (The registry may still list the killed catalog's pid until its entry expires.)
    let allowed_to_up = cpus_allowed(proc.pid()).expect("up runs");
    if allowed_to_up.len() > 1 {
        let mut used = std::collections::BTreeSet::new();
        let mut live = 0;
        for (pid, cpus) in pids
            .iter()
            .filter_map(|&pid| Some((pid, cpus_allowed(pid)?)))
        {
            live += 1;
            assert_eq!(cpus.len(), 1, "process {pid} runs on {cpus:?}");
            assert!(
                allowed_to_up.contains(&cpus[0]),
                "{cpus:?} / {allowed_to_up:?}"
            );
            used.insert(cpus[0]);
        }
        assert!(live >= 3, "{live} of {pids:?} alive");
        assert!(used.len() > 1, "all processes on {used:?}");
        let new_catalog = instances_pid(&registry, "catalog", catalog_pid);
        assert_eq!(
            cpus_allowed(new_catalog).map(|cpus| cpus.len()),
            Some(1),
            "the restarted catalog is pinned too"
        );
    }
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

/// The pid of the live `service` instance the registry lists other than `old_pid`.
fn instances_pid(registry: &str, service: &str, old_pid: i32) -> i32 {
    let (_, out) = cli(&["status", "--json", "--registry", registry]);
    serde_json::from_str::<serde_json::Value>(&out).expect("json")["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["service"] == service)
        .filter_map(|i| i["metadata"]["pid"].as_str()?.parse::<i32>().ok())
        .find(|&pid| pid != old_pid)
        .unwrap_or_else(|| panic!("no new {service} instance: {out}"))
}

/// The CPUs a process may run on, from `Cpus_allowed_list` in `/proc/<pid>/status` ("0-3,6");
/// `None` when there is no such process (any more).
fn cpus_allowed(pid: i32) -> Option<Vec<usize>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    Some(
        list.split(',')
            .flat_map(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                let (from, to): (usize, usize) =
                    (from.parse().expect("cpu"), to.parse().expect("cpu"));
                from..=to
            })
            .collect(),
    )
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
