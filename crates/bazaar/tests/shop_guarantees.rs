//! Guarantees of the shop that need real processes: no oversell when many checkouts race for
//! the last units, an email per order exactly once after notifications was down (G2), one
//! charge when payments dies between the processor's answer and storing it (G4), and a clean
//! reconciliation after random kills during checkouts (G9).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const PRODUCT: &str = "kitchen-espresso-cup-set";
const SUCCESS_CARD: &str = "4242424242424242";

struct Shop {
    base: String,
    token: String,
}

/// A running system: the shop as the demo customer, `bazaar up`, its data and ports.
struct System {
    shop: Shop,
    _up: Proc,
    data: tempfile::TempDir,
    registry: u16,
}

impl System {
    /// `bazaar up --without <each of without>` with extra `BAZAAR_...` settings.
    fn start(without: &[&str], env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let gateway = free_port();
        let base_port = free_port_range(16);
        let mut command = Command::new(BIN);
        command
            .args([
                "up",
                "--port",
                &gateway.to_string(),
                "--base-port",
                &base_port.to_string(),
            ])
            .arg("--data-dir")
            .arg(data.path());
        for name in without {
            command.args(["--without", name]);
        }
        let mut child = command
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bazaar up");
        let stdout = child.stdout.take().expect("stdout");
        let up = Proc(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        wait_for_line(&rx, "bazaar is up", Duration::from_secs(60));
        // Keep draining the supervisor's output so it never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let base = format!("http://127.0.0.1:{gateway}");
        let token = user_token(&base, DEMO_CUSTOMER.0, DEMO_CUSTOMER.1);
        Self {
            shop: Shop { base, token },
            _up: up,
            data,
            registry: base_port,
        }
    }

    /// Starts one service by hand, the way `up` would (same registry, issuer, data directory).
    fn serve(&self, service: &str, env: &[(&str, &str)]) -> Proc {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["serve", service, "--port", &port.to_string(), "--data-dir"])
            .arg(self.data.path().join(service))
            .env(
                "BAZAAR_REGISTRY_URL",
                format!("http://127.0.0.1:{}", self.registry),
            )
            .env("BAZAAR_ISSUER", &self.shop.base)
            .env("BAZAAR_HEARTBEAT_INTERVAL_MS", "200")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bazaar serve");
        Proc(child)
    }

    /// The instances the registry knows of one service.
    fn instances(&self, service: &str) -> Vec<Value> {
        http()
            .get(format!(
                "http://127.0.0.1:{}/api/v1/services/{service}",
                self.registry
            ))
            .send()
            .and_then(|r| r.json::<Vec<Value>>())
            .unwrap_or_default()
    }

    fn up_instances(&self, service: &str) -> usize {
        self.instances(service)
            .iter()
            .filter(|i| i["status"] == "up")
            .count()
    }

    fn address_of(&self, service: &str) -> String {
        let mut address = String::new();
        wait_until(
            &format!("{service} registered"),
            Duration::from_secs(30),
            || {
                address = self
                    .instances(service)
                    .first()
                    .and_then(|i| i["address"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                !address.is_empty()
            },
        );
        address
    }
}

impl Shop {
    fn as_user(&self, token: String) -> Shop {
        Shop {
            base: self.base.clone(),
            token,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = http()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().expect("request");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    fn add_to_cart(&self, product_id: &str, quantity: i64) {
        let (status, body) = self.call(
            reqwest::Method::POST,
            "/api/v1/cart/lines",
            Some(json!({"product_id": product_id, "quantity": quantity})),
        );
        assert!(status < 300, "add to cart: {status} {body}");
    }

    fn card(&self, number: &str) -> String {
        let (status, body) = self.call(
            reqwest::Method::POST,
            "/api/v1/payments/cards",
            Some(json!({"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"})),
        );
        assert_eq!(status, 201, "tokenize: {body}");
        body["card_token"].as_str().expect("card_token").to_owned()
    }

    fn place_with(
        &self,
        client: &reqwest::blocking::Client,
        key: &str,
        card_token: &str,
    ) -> (u16, Value) {
        let response = client
            .post(format!("{}/api/v1/orders", self.base))
            .bearer_auth(&self.token)
            .header("idempotency-key", key)
            .json(&json!({
                "shipping_address": {"name": "Test Shopper", "line1": "1 Main St", "city": "New York",
                    "country": "US", "postal_code": "10001"},
                "card_token": card_token,
            }))
            .send()
            .expect("place order");
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    fn place(&self, key: &str, card_token: &str) -> String {
        let (status, placed) = self.place_with(&http(), key, card_token);
        assert_eq!(status, 202, "{placed}");
        placed["order_id"].as_str().expect("order_id").to_owned()
    }

    fn order(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/api/v1/orders/{id}"), None)
            .1
    }

    fn await_terminal(&self, id: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        wait_until(&format!("order {id} to finish"), timeout, || {
            last = self.order(id);
            last["status"] == "confirmed" || last["status"] == "cancelled"
        });
        last
    }

    /// The caller's orders (at most 200), by id.
    fn orders(&self) -> BTreeMap<String, Value> {
        let (status, body) = self.call(reqwest::Method::GET, "/api/v1/orders?limit=200", None);
        if status != 200 {
            return BTreeMap::new();
        }
        body["orders"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|o| (o["id"].as_str().unwrap_or_default().to_owned(), o.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn inventory(&self, product_id: &str) -> Value {
        let (status, body) = self.call(
            reqwest::Method::GET,
            &format!("/api/v1/inventory/{product_id}"),
            None,
        );
        assert_eq!(status, 200, "{body}");
        body
    }
}

fn reconcile(registry_port: u16) -> Value {
    let (ok, out) = cli(&[
        "--registry",
        &format!("http://127.0.0.1:{registry_port}"),
        "--json",
        "reconcile",
        "--allow-findings",
    ]);
    assert!(ok, "reconcile ran: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("reconcile json: {e}: {out}"))
}

fn terminal(order: &Value) -> bool {
    order["status"] == "confirmed" || order["status"] == "cancelled"
}

/// The oversell race: 200 orders, each for one unit, race for the last 50 units. Shipping is
/// down while they are placed, so every saga waits at its first step (`locate`) and the cart is
/// not cleared by a confirmation under the shopper's feet: all 200 are placed, then shipping
/// starts and the sagas race through reserve_stock together.
#[test]
fn two_hundred_checkouts_race_for_fifty_units() {
    let system = System::start(&["shipping"], &[]);
    let shop = &system.shop;
    let admin = shop.as_user(user_token(&shop.base, DEMO_ADMIN.0, DEMO_ADMIN.1));

    // Exactly 50 units in total: all in the first warehouse, none elsewhere.
    let item = shop.inventory(PRODUCT);
    for (i, warehouse) in item["warehouses"]
        .as_array()
        .expect("warehouses")
        .iter()
        .enumerate()
    {
        let available = warehouse["available"].as_i64().expect("available");
        let target = if i == 0 { 50 } else { 0 };
        if available != target {
            let (status, body) = admin.call(
                reqwest::Method::POST,
                &format!("/api/v1/inventory/{PRODUCT}/adjustments"),
                Some(json!({"warehouse_id": warehouse["warehouse_id"],
                    "delta": target - available, "reason": "oversell race test"})),
            );
            assert!(status < 300, "adjust: {status} {body}");
        }
    }
    assert_eq!(shop.inventory(PRODUCT)["available"], 50);

    shop.add_to_cart(PRODUCT, 1);
    let card = shop.card(SUCCESS_CARD);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let barrier = Arc::new(Barrier::new(200));
    let placed: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let (client, barrier, card) = (client.clone(), barrier.clone(), card.clone());
                scope.spawn(move || {
                    barrier.wait();
                    shop.place_with(&client, &format!("race-{i}"), &card)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let ids: BTreeSet<String> = placed
        .iter()
        .filter(|(status, _)| *status == 202)
        .map(|(_, body)| body["order_id"].as_str().expect("order_id").to_owned())
        .collect();
    let refused: Vec<_> = placed.iter().filter(|(s, _)| *s != 202).collect();
    eprintln!(
        "placed {} orders; refused {}: {:?}",
        ids.len(),
        refused.len(),
        refused.iter().take(3).collect::<Vec<_>>()
    );
    assert!(ids.len() >= 100, "too few orders placed: {refused:?}");

    let _shipping = system.serve("shipping", &[]);
    let mut orders = BTreeMap::new();
    wait_until(
        "every raced order to finish",
        Duration::from_secs(100),
        || {
            orders = shop.orders();
            ids.iter().all(|id| orders.get(id).is_some_and(terminal))
        },
    );
    let confirmed = ids
        .iter()
        .filter(|id| orders[*id]["status"] == "confirmed")
        .count();
    assert_eq!(confirmed, ids.len().min(50), "confirmed orders");
    for id in &ids {
        let order = &orders[id];
        if order["status"] == "cancelled" {
            assert!(
                order["status_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("out of stock"),
                "{order:#}"
            );
        }
    }
    let item = shop.inventory(PRODUCT);
    assert_eq!(item["available"], 0, "{item:#}");
    for warehouse in item["warehouses"].as_array().expect("warehouses") {
        for field in ["on_hand", "reserved", "available"] {
            assert!(warehouse[field].as_i64().unwrap() >= 0, "{item:#}");
        }
    }
    let report = reconcile(system.registry);
    assert_eq!(report["findings"], json!([]), "{report:#}");
}

/// The confirmation emails of the mailbox: subject → how many.
fn confirmation_emails(shop: &Shop) -> BTreeMap<String, usize> {
    let (status, mailbox) = shop.call(
        reqwest::Method::GET,
        "/api/v1/notifications?limit=100",
        None,
    );
    let mut counts = BTreeMap::new();
    if status != 200 {
        return counts;
    }
    for item in mailbox["items"].as_array().into_iter().flatten() {
        let subject = item["subject"].as_str().unwrap_or_default();
        if subject.ends_with("is confirmed") {
            *counts.entry(subject.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// G2: events published while notifications is down are delivered when it comes back, each
/// exactly once.
#[test]
fn notifications_down_then_back_delivers_every_email_once() {
    let system = System::start(&["notifications"], &[]);
    let shop = &system.shop;
    let card = shop.card(SUCCESS_CARD);
    let mut ids = Vec::new();
    for n in 0..3 {
        shop.add_to_cart(PRODUCT, 1);
        let id = shop.place(&format!("g2-{n}"), &card);
        let order = shop.await_terminal(&id, Duration::from_secs(60));
        assert_eq!(order["status"], "confirmed", "{order:#}");
        ids.push(id);
        // The next order must not snapshot this one's line: wait for the cart to be cleared.
        wait_until("the cart to be cleared", Duration::from_secs(20), || {
            shop.call(reqwest::Method::GET, "/api/v1/cart", None).1["lines"]
                .as_array()
                .is_some_and(|l| l.is_empty())
        });
    }

    let _notifications = system.serve("notifications", &[]);
    let expected: BTreeMap<String, usize> = ids
        .iter()
        .map(|id| (format!("Your order {id} is confirmed"), 1))
        .collect();
    let mut seen = BTreeMap::new();
    wait_until(
        "a confirmation email per order",
        Duration::from_secs(60),
        || {
            seen = confirmation_emails(shop);
            expected.keys().all(|k| seen.contains_key(k))
        },
    );
    // Give duplicates every chance to show: redelivery of the backlog settles first.
    let settle = Instant::now() + Duration::from_secs(3);
    wait_until("the mailbox to settle", Duration::from_secs(10), || {
        seen = confirmation_emails(shop);
        Instant::now() >= settle
    });
    assert_eq!(seen, expected, "exactly one confirmation email per order");
}

/// G4: payments dies right after the processor authorized and before it stored the answer;
/// restarted, it finds the processor's authorization instead of charging again.
#[test]
fn payments_killed_between_processor_and_reply_charges_once() {
    let system = System::start(&["payments"], &[]);
    let shop = &system.shop;
    let processor = system.address_of("processor");

    let mut crashing = system.serve(
        "payments",
        &[
            ("BAZAAR_PAYMENTS__CRASH_AFTER_PROCESSOR_CALL", "authorize"),
            ("BAZAAR_PAYMENTS__PROCESSOR_URL", &processor),
        ],
    );
    wait_until("payments to be up", Duration::from_secs(30), || {
        system.up_instances("payments") > 0
    });
    shop.add_to_cart(PRODUCT, 1);
    let card = shop.card(SUCCESS_CARD);
    let id = shop.place("g4-once", &card);

    let mut code = None;
    wait_until(
        "payments to exit through the chaos hook",
        Duration::from_secs(60),
        || {
            code = crashing.0.try_wait().expect("try_wait").map(|s| s.code());
            code.is_some()
        },
    );
    assert_eq!(code, Some(Some(86)));
    let order = shop.order(&id);
    assert_eq!(order["status"], "pending", "{order:#}");
    wait_until(
        "the order to wait for payments",
        Duration::from_secs(30),
        || {
            let order = shop.order(&id);
            order["status"] == "pending"
                && order["status_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("payments")
        },
    );

    let _payments = system.serve(
        "payments",
        &[("BAZAAR_PAYMENTS__PROCESSOR_URL", &processor)],
    );
    let order = shop.await_terminal(&id, Duration::from_secs(90));
    assert_eq!(order["status"], "confirmed", "{order:#}");

    let authorizations: Value = http()
        .get(format!("{processor}/v1/authorizations?reference={id}"))
        .bearer_auth("sk_test_bazaar")
        .send()
        .expect("processor")
        .json()
        .expect("json");
    let list = authorizations["authorizations"]
        .as_array()
        .expect("authorizations");
    assert_eq!(
        list.len(),
        1,
        "one authorization for the order: {authorizations:#}"
    );
    assert_eq!(list[0]["reference"], json!(id), "{authorizations:#}");
    let report = reconcile(system.registry);
    assert_eq!(report["findings"], json!([]), "{report:#}");
}

/// G9: business services are killed with SIGKILL at random during checkouts; the supervisor
/// restarts them, every saga finishes (or waits with a reason), and reconciliation is clean.
#[test]
fn chaos_kills_during_checkouts_then_reconcile_is_clean() {
    let system = System::start(&[], &[]);
    let shop = &system.shop;
    let card = shop.card(SUCCESS_CARD);
    shop.add_to_cart(PRODUCT, 1);

    let victims = [
        "catalog",
        "inventory",
        "cart",
        "currency",
        "payments",
        "shipping",
        "orders",
        "notifications",
    ];
    let killer = {
        let registry = system.registry;
        std::thread::spawn(move || {
            let mut kills = Vec::new();
            let until = Instant::now() + Duration::from_secs(15);
            let mut round = 0usize;
            while Instant::now() < until {
                let service = victims[(fastrand_port() as usize + round) % victims.len()];
                round += 1;
                let pids: Vec<i32> = http()
                    .get(format!(
                        "http://127.0.0.1:{registry}/api/v1/services/{service}"
                    ))
                    .send()
                    .and_then(|r| r.json::<Vec<Value>>())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|i| i["metadata"]["pid"].as_str()?.parse().ok())
                    .collect();
                if let Some(&pid) = pids.first() {
                    if pid_alive(pid) {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                        kills.push((service, pid));
                    }
                }
                // The chaos cadence itself, not a synchronisation: one kill about every second.
                std::thread::sleep(Duration::from_secs(1));
            }
            kills
        })
    };

    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut ids = BTreeSet::new();
    let started = Instant::now();
    let mut attempt = 0;
    let mut statuses = BTreeMap::new();
    while ids.len() < 60 && started.elapsed() < Duration::from_secs(45) {
        attempt += 1;
        let response = client
            .post(format!("{}/api/v1/orders", shop.base))
            .bearer_auth(&shop.token)
            .header("idempotency-key", format!("chaos-{attempt}"))
            .json(&json!({
                "shipping_address": {"name": "Test Shopper", "line1": "1 Main St",
                    "city": "New York", "country": "US", "postal_code": "10001"},
                "card_token": card,
            }))
            .send();
        let status = response.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        *statuses.entry(status).or_insert(0) += 1;
        if let Ok(response) = response {
            if status == 202 {
                if let Ok(body) = response.json::<Value>() {
                    if let Some(id) = body["order_id"].as_str() {
                        ids.insert(id.to_owned());
                    }
                }
            } else if status == 422 {
                // The cart was cleared by a confirmation: refill it (best effort under chaos).
                let _ = client
                    .post(format!("{}/api/v1/cart/lines", shop.base))
                    .bearer_auth(&shop.token)
                    .json(&json!({"product_id": PRODUCT, "quantity": 1}))
                    .send();
            }
        }
        // Load pacing, not synchronisation: spread the checkouts over the chaos window.
        std::thread::sleep(Duration::from_millis(200));
    }
    let kills = killer.join().expect("killer");
    eprintln!(
        "placed {} orders (answers {statuses:?}); kills: {kills:?}",
        ids.len()
    );
    assert!(ids.len() >= 30, "too few orders placed under chaos");
    assert!(kills.len() >= 5, "too few kills: {kills:?}");

    let mut orders = BTreeMap::new();
    wait_until("every order to finish", Duration::from_secs(90), || {
        orders = shop.orders();
        ids.iter().all(|id| orders.get(id).is_some_and(terminal))
    });
    for id in &ids {
        let order = &orders[id];
        assert!(
            !order["status_reason"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{order:#}"
        );
    }
    let report = reconcile(system.registry);
    assert_eq!(report["findings"], json!([]), "{report:#}");
}
