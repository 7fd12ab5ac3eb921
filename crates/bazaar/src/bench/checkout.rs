//! `bazaar bench checkout`: checkouts per second through the gateway of a running system, from
//! the placement request to the confirmed order.
//!
//! Preparation (not measured): the stock of the product is topped up by an admin so it cannot
//! run out; `--users` shoppers are registered (`POST /api/v1/users`) and signed in headlessly
//! (authorization code + PKCE through the login form, as a browser would, with the `bazaar-cli`
//! public client); each tokenizes a test card and puts one unit of the product in its cart.
//!
//! Load: `--connections` loops each place orders back to back (one request in flight, a fresh
//! `Idempotency-Key` each) for `--warmup` and then `--seconds`; with `--closed-loop` each loop
//! first waits for its order to finish (one status request the orders service holds until the
//! order is done: `?wait=`; with `--prefer-wait` the placement itself carries `Prefer: wait=5`
//! and its answer the outcome, one request per order), so the offered load is what the
//! saga sustains instead of a growing backlog. An order takes the whole cart and
//! its confirmation removes the ordered unit from the cart asynchronously (an event), so a
//! cart holds one unit or none: a placement answered `422 empty_cart` puts the unit back and
//! tries again (counted as a refill, not an error). A closed loop takes turns between its
//! shoppers (by default three per connection): a shopper's cart is refilled two orders after
//! its last, once that confirmation's event has emptied it. With one shopper per loop, the
//! refill right after the confirmation often came before the event, which then took the new
//! unit out (a refused placement and a second refill for 17 to 40% of the orders). Then every placed order is polled until it
//! is terminal or `--drain` runs out.
//!
//! Figures: placements accepted (202) per second in the window and their latency; orders
//! confirmed per second, counting every confirmation (from warm-up or window orders) whose
//! commit falls inside the window, which is the saga's sustained rate; and the time from sending
//! a window order's placement to its confirmation's commit. That last one uses the order's
//! `updated_at_ms` (the server's clock, set by the step that confirmed it) against this
//! process's clock, so it is exact when the bench runs on the system's machine. On Linux, also
//! the CPU time each of the system's processes used over the window per confirmed order
//! ([`super::cpu`]), the figure that shows whether a change made a checkout cheaper.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::Digest;

use crate::cli::{CheckoutBenchArgs, Global};
use crate::output;
use crate::session;

/// Longest answer time of any one request; a slower answer counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent requests while preparing (registration and sign-in hash passwords: keep it low).
const PREPARE_PARALLEL: usize = 4;
/// Concurrent status reads while draining.
const POLL_PARALLEL: usize = 16;
/// The public client the CLI signs in with; any loopback redirect port matches (RFC 8252).
const CLIENT_ID: &str = session::CLIENT_ID;
const REDIRECT_URI: &str = "http://127.0.0.1/callback";
/// Where every bench order ships: a postal code the shipping data resolves.
const ADDRESS: (&str, &str) = ("US", "10001");
/// The card the simulator always authorizes.
const CARD: &str = "4242424242424242";

/// The figures of one run (`--json` prints this).
#[derive(Debug, Serialize)]
pub struct CheckoutReport {
    pub gateway: String,
    pub product: String,
    pub connections: usize,
    pub users: usize,
    pub closed_loop: bool,
    /// Closed loop with the outcome asked for in the placement (`Prefer: wait`).
    pub prefer_wait: bool,
    pub warmup_seconds: u64,
    pub window_seconds: f64,
    /// Orders accepted (201 or 202) during the window.
    pub accepted: u64,
    pub accepted_per_second: f64,
    pub placement_p50_ms: f64,
    pub placement_p99_ms: f64,
    pub placement_max_ms: f64,
    /// Confirmations (of any order of the run) committed inside the window.
    pub confirmed_in_window: u64,
    pub confirmed_per_second: f64,
    /// Of the window's orders: how they ended by the end of the drain.
    pub window_orders_confirmed: u64,
    pub window_orders_cancelled: u64,
    pub window_orders_pending: u64,
    /// Sending the placement to the confirmation's commit, window orders that confirmed.
    pub confirmed_p50_ms: f64,
    pub confirmed_p99_ms: f64,
    pub confirmed_max_ms: f64,
    /// From the window's end until the last window order confirmed (the backlog's length).
    pub drain_seconds: f64,
    /// Placements answered `422 empty_cart` and retried after putting the unit back.
    pub cart_refills: u64,
    /// Failed placements, by answer.
    pub errors: BTreeMap<String, u64>,
    /// Why orders were cancelled, by reason (should be empty).
    pub cancel_reasons: BTreeMap<String, u64>,
    /// Milliseconds of CPU per confirmed order over the window, by process (each service,
    /// PostgreSQL, NATS), read from `/proc` on this machine ([`super::cpu`]); empty elsewhere.
    pub cpu_ms_per_order: BTreeMap<String, f64>,
    /// Their sum.
    pub cpu_ms_per_order_total: f64,
}

/// A signed-in shopper ready to check out.
struct Shopper {
    token: String,
    card_token: String,
}

/// One accepted placement.
#[derive(Debug, Clone)]
struct Placement {
    order_id: String,
    user: usize,
    /// This process's wall clock when the request was sent, Unix ms.
    sent_at_ms: i64,
    latency_us: u32,
    in_window: bool,
}

/// What one placement loop did.
#[derive(Default)]
struct LoopResult {
    placements: Vec<Placement>,
    /// How the orders it waited for ended (closed loop).
    outcomes: Vec<(String, Outcome)>,
    refills: u64,
    errors: BTreeMap<String, u64>,
}

/// How one order ended.
#[derive(Debug, Clone)]
struct Outcome {
    status: String,
    reason: String,
    /// When its last step committed (its confirmation, for a confirmed order), Unix ms.
    updated_at_ms: i64,
}

impl Outcome {
    /// Read from an order, or from a placement's answer (which has the same three fields).
    fn of(order: &Value) -> Option<Self> {
        Some(Self {
            status: order["status"].as_str()?.to_owned(),
            reason: order["status_reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            updated_at_ms: order["updated_at_ms"].as_i64()?,
        })
    }
}

pub async fn run(global: Global, args: CheckoutBenchArgs) -> anyhow::Result<()> {
    let report = measure(&global, &args).await?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_report(&report);
    Ok(())
}

async fn measure(global: &Global, args: &CheckoutBenchArgs) -> anyhow::Result<CheckoutReport> {
    let gateway = session::gateway_key(&global.gateway);
    let connections = args.connections.max(1);
    let per_connection = if args.closed_loop { 3 } else { 1 };
    let users = args.users.unwrap_or(connections * per_connection).max(1);
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(connections + POLL_PARALLEL)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let api = Api {
        http,
        gateway: gateway.clone(),
    };

    eprintln!("preparing: topping up the stock of {}...", args.product);
    let admin = api
        .sign_in(&args.admin_email, &args.admin_password)
        .await
        .context("cannot sign in as the admin (--admin-email, --admin-password)")?;
    api.top_up(&admin, &args.product, args.stock).await?;

    eprintln!("preparing: registering and signing in {users} shoppers...");
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let shoppers: Vec<anyhow::Result<Shopper>> = futures::stream::iter(0..users)
        .map(|i| {
            let (api, product, run_id) = (&api, &args.product, &run_id);
            async move { api.prepare_shopper(run_id, i, product).await }
        })
        .buffered(PREPARE_PARALLEL)
        .collect()
        .await;
    let shoppers: Arc<Vec<Shopper>> = Arc::new(shoppers.into_iter().collect::<Result<_, _>>()?);

    let api = Arc::new(api);
    let product = Arc::new(args.product.clone());
    let warmup = Duration::from_secs(args.warmup);
    let window = Duration::from_secs(args.seconds.max(1));
    eprintln!(
        "placing orders with {connections} connections: {}s warm-up, {}s measured...",
        warmup.as_secs(),
        window.as_secs()
    );
    let started = Instant::now();
    let window_start = started + warmup;
    let window_end = window_start + window;
    let window_start_ms = unix_ms() + warmup.as_millis() as i64;
    let mut loops = Vec::new();
    for connection in 0..connections {
        let (api, shoppers, product, run_id) = (
            api.clone(),
            shoppers.clone(),
            product.clone(),
            run_id.clone(),
        );
        let mode = match (args.closed_loop, args.prefer_wait) {
            (false, _) => LoopMode::Open,
            (true, false) => LoopMode::Closed,
            (true, true) => LoopMode::ClosedPreferWait,
        };
        loops.push(tokio::spawn(async move {
            place_loop(
                &api,
                &shoppers,
                &product,
                &run_id,
                (connection, connections),
                mode,
                (window_start, window_end),
            )
            .await
        }));
    }
    // The system's CPU time over the window, for the CPU each order cost.
    tokio::time::sleep_until(window_start.into()).await;
    let cpu_start = tokio::task::spawn_blocking(super::cpu::snapshot).await?;
    tokio::time::sleep_until(window_end.into()).await;
    let cpu_end = tokio::task::spawn_blocking(super::cpu::snapshot).await?;
    let mut placements = Vec::new();
    let mut known = BTreeMap::new();
    let mut refills = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for task in loops {
        let result = task.await?;
        placements.extend(result.placements);
        known.extend(result.outcomes);
        refills += result.refills;
        for (error, n) in result.errors {
            *errors.entry(error).or_default() += n;
        }
    }
    // The window as it really was: from its start to the last loop's stop.
    let window_seconds = (Instant::now() - window_start).as_secs_f64();
    let window_end_ms = window_start_ms + (window_seconds * 1000.0) as i64;

    eprintln!(
        "waiting up to {}s for {} orders to finish...",
        args.drain,
        placements.len()
    );
    let outcomes = drain(
        &api,
        &shoppers,
        &placements,
        known,
        Duration::from_secs(args.drain),
    )
    .await;

    let in_window: Vec<&Placement> = placements.iter().filter(|p| p.in_window).collect();
    let mut placement_us: Vec<u32> = in_window.iter().map(|p| p.latency_us).collect();
    placement_us.sort_unstable();
    let confirmed_in_window = outcomes
        .values()
        .filter(|o| {
            o.status == "confirmed"
                && o.updated_at_ms >= window_start_ms
                && o.updated_at_ms <= window_end_ms
        })
        .count() as u64;
    let mut confirmed_us = Vec::new();
    let (mut cancelled, mut pending) = (0, 0);
    let mut cancel_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_confirmed_ms = window_end_ms;
    for placement in &in_window {
        match outcomes.get(&placement.order_id) {
            Some(o) if o.status == "confirmed" => {
                let waited = (o.updated_at_ms - placement.sent_at_ms).max(0);
                confirmed_us.push(u32::try_from(waited * 1000).unwrap_or(u32::MAX));
                last_confirmed_ms = last_confirmed_ms.max(o.updated_at_ms);
            }
            Some(o) if o.status == "cancelled" => {
                cancelled += 1;
                *cancel_reasons.entry(o.reason.clone()).or_default() += 1;
            }
            _ => pending += 1,
        }
    }
    confirmed_us.sort_unstable();
    let pct = super::percentile_ms;
    let confirmed_per_second = confirmed_in_window as f64 / window_seconds;
    let cpu_ms_per_order = super::cpu::per_order(&cpu_start, &cpu_end, confirmed_per_second);
    Ok(CheckoutReport {
        gateway,
        product: args.product.clone(),
        connections,
        users,
        closed_loop: args.closed_loop,
        prefer_wait: args.prefer_wait,
        warmup_seconds: warmup.as_secs(),
        window_seconds,
        accepted: in_window.len() as u64,
        accepted_per_second: in_window.len() as f64 / window_seconds,
        placement_p50_ms: pct(&placement_us, 0.50),
        placement_p99_ms: pct(&placement_us, 0.99),
        placement_max_ms: pct(&placement_us, 1.0),
        confirmed_in_window,
        confirmed_per_second,
        window_orders_confirmed: confirmed_us.len() as u64,
        window_orders_cancelled: cancelled,
        window_orders_pending: pending,
        confirmed_p50_ms: pct(&confirmed_us, 0.50),
        confirmed_p99_ms: pct(&confirmed_us, 0.99),
        confirmed_max_ms: pct(&confirmed_us, 1.0),
        drain_seconds: (last_confirmed_ms - window_end_ms) as f64 / 1000.0,
        cart_refills: refills,
        errors,
        cancel_reasons,
        cpu_ms_per_order_total: cpu_ms_per_order.values().sum(),
        cpu_ms_per_order,
    })
}

/// How a connection paces its placements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopMode {
    /// The next order as soon as the last is accepted.
    Open,
    /// The next order once the last has finished, learnt from a status request that waits.
    Closed,
    /// As `Closed`, the outcome asked for in the placement (`Prefer: wait=5`).
    ClosedPreferWait,
}

/// Places orders back to back until the window's end, taking turns between the shoppers
/// `connection`, `connection + connections`, ... (shopper `connection % shoppers` when there
/// are fewer shoppers than connections); those sent from the window's start on are the measured
/// ones. In a closed loop, each order is awaited before the next.
async fn place_loop(
    api: &Api,
    shoppers: &[Shopper],
    product: &str,
    run_id: &str,
    (connection, connections): (usize, usize),
    mode: LoopMode,
    (window_start, window_end): (Instant, Instant),
) -> LoopResult {
    let closed_loop = mode != LoopMode::Open;
    let mut mine: Vec<usize> = (connection..shoppers.len()).step_by(connections).collect();
    if mine.is_empty() {
        mine.push(connection % shoppers.len());
    }
    let mut result = LoopResult::default();
    let mut sequence = 0u64;
    while Instant::now() < window_end {
        sequence += 1;
        let user = mine[(sequence as usize - 1) % mine.len()];
        let shopper = &shoppers[user];
        let body = json!({
            "shipping_address": {"name": "Bench Shopper", "line1": "1 Main Street",
                "city": "New York", "country": ADDRESS.0, "postal_code": ADDRESS.1},
            "card_token": shopper.card_token,
        });
        if closed_loop && sequence as usize > mine.len() {
            // This shopper's last order's confirmation has (almost always) emptied the cart by
            // now: put the unit back up front rather than learn it from a refused placement.
            if let Err(error) = api.fill_cart(&shopper.token, product).await {
                *result
                    .errors
                    .entry(format!("cart refill: {error:#}"))
                    .or_default() += 1;
            }
        }
        let sent = Instant::now();
        let sent_at_ms = unix_ms();
        let mut request = api
            .http
            .post(format!("{}/api/v1/orders", api.gateway))
            .bearer_auth(&shopper.token)
            .header(
                "idempotency-key",
                format!("bench-{run_id}-{connection}-{sequence}"),
            )
            .json(&body);
        if mode == LoopMode::ClosedPreferWait {
            request = request.header("prefer", "wait=5");
        }
        let response = request.send().await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                let kind = if error.is_timeout() {
                    "timeout"
                } else {
                    "transport error"
                };
                *result.errors.entry(kind.to_owned()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        let latency = sent.elapsed();
        match status {
            201 | 202 => match answer["order_id"].as_str() {
                Some(id) => {
                    result.placements.push(Placement {
                        order_id: id.to_owned(),
                        user,
                        sent_at_ms,
                        latency_us: u32::try_from(latency.as_micros()).unwrap_or(u32::MAX),
                        in_window: sent >= window_start,
                    });
                    if closed_loop {
                        // An answer that waited (`Prefer: wait`) may carry the outcome.
                        let outcome = match Outcome::of(&answer) {
                            Some(outcome) if outcome.status != "pending" => Some(outcome),
                            _ => await_order(api, &shopper.token, id).await,
                        };
                        if let Some(outcome) = outcome {
                            result.outcomes.push((id.to_owned(), outcome));
                        }
                    }
                }
                None => {
                    *result
                        .errors
                        .entry(format!("{status} without order_id"))
                        .or_default() += 1
                }
            },
            422 if answer["code"] == "empty_cart" => {
                // A confirmation took the unit out of the cart: put it back and go on.
                result.refills += 1;
                if let Err(error) = api.fill_cart(&shopper.token, product).await {
                    *result
                        .errors
                        .entry(format!("cart refill: {error:#}"))
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            _ => {
                let code = answer["code"].as_str().unwrap_or_default();
                *result
                    .errors
                    .entry(format!("{status} {code}").trim().to_owned())
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    result
}

/// Waits (closed loop) until an order is terminal, `None` if it is not within a minute: each
/// status request asks the orders service to hold its answer until the order finishes (`wait`,
/// at most 5 s), so an order costs one status read however long it takes. The latency reported
/// comes from the order's own timestamps, not from when it was seen.
async fn await_order(api: &Api, token: &str, id: &str) -> Option<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match api.order_when_done(token, id).await {
            Some(outcome) if outcome.status != "pending" => return Some(outcome),
            Some(_) => {}
            // Refused or unreachable: do not hammer the gateway.
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}

/// Reads every order's status until all are terminal or `limit` passes; the last answer of each
/// (starting from the terminal outcomes already `known`).
async fn drain(
    api: &Api,
    shoppers: &[Shopper],
    placements: &[Placement],
    known: BTreeMap<String, Outcome>,
    limit: Duration,
) -> BTreeMap<String, Outcome> {
    let deadline = Instant::now() + limit;
    let mut outcomes = known;
    let mut pending: Vec<&Placement> = placements
        .iter()
        .filter(|p| !outcomes.contains_key(&p.order_id))
        .collect();
    loop {
        let answers: Vec<(String, Option<Outcome>)> = futures::stream::iter(pending.iter())
            .map(|p| async move {
                let outcome = api.order(&shoppers[p.user].token, &p.order_id).await;
                (p.order_id.clone(), outcome)
            })
            .buffer_unordered(POLL_PARALLEL)
            .collect()
            .await;
        for (id, outcome) in answers {
            if let Some(outcome) = outcome {
                outcomes.insert(id, outcome);
            }
        }
        pending.retain(|p| {
            outcomes
                .get(&p.order_id)
                .is_none_or(|o| o.status == "pending")
        });
        if pending.is_empty() || Instant::now() >= deadline {
            return outcomes;
        }
        // The poll's own pace: each pass reads every unfinished order once.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The gateway, as the bench's shoppers and admin use it.
struct Api {
    http: reqwest::Client,
    gateway: String,
}

impl Api {
    /// Sends a request built by `build`, waiting out the gateway's per-address limit on
    /// anonymous requests (429 with `Retry-After`) instead of failing the preparation.
    async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        for _ in 0..30 {
            let response = build()
                .send()
                .await
                .with_context(|| format!("cannot reach the gateway at {}", self.gateway))?;
            if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                return Ok(response);
            }
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 10);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        anyhow::bail!("the gateway kept answering 429 Too Many Requests")
    }

    /// A JSON call that must succeed.
    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let response = self
            .send(|| {
                let request = self
                    .http
                    .request(method.clone(), format!("{}{path}", self.gateway))
                    .bearer_auth(token);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        if !response.status().is_success() {
            return Err(output::problem_error(response)
                .await
                .context(format!("{method} {path}")));
        }
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// Registers shopper `index` of this run, signs it in, tokenizes its card and fills its
    /// cart with one unit of `product`.
    async fn prepare_shopper(
        &self,
        run_id: &str,
        index: usize,
        product: &str,
    ) -> anyhow::Result<Shopper> {
        let email = format!("bench-{run_id}-{index}@bench.bazaar.test");
        let password = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let registration = json!({"email": email, "password": password,
            "name": format!("Bench Shopper {index}")});
        let response = self
            .send(|| {
                self.http
                    .post(format!("{}/api/v1/users", self.gateway))
                    .json(&registration)
            })
            .await?;
        if !response.status().is_success() {
            return Err(output::problem_error(response)
                .await
                .context(format!("cannot register {email}")));
        }
        let token = self.sign_in(&email, &password).await?;
        let card = self
            .call(
                &token,
                reqwest::Method::POST,
                "/api/v1/payments/cards",
                Some(&json!({"number": CARD, "exp_month": 12, "exp_year": 2035, "cvc": "123"})),
            )
            .await?;
        let card_token = card["card_token"]
            .as_str()
            .context("payments answered without a card_token")?
            .to_owned();
        self.fill_cart(&token, product).await?;
        Ok(Shopper { token, card_token })
    }

    /// Sets the cart's line of `product` to one unit.
    async fn fill_cart(&self, token: &str, product: &str) -> anyhow::Result<()> {
        self.call(
            token,
            reqwest::Method::PUT,
            &format!("/api/v1/cart/lines/{}", crate::products::encode(product)),
            Some(&json!({"quantity": 1})),
        )
        .await
        .map(drop)
    }

    /// Adjusts every warehouse's stock of `product` up to at least `stock` available units.
    async fn top_up(&self, admin: &str, product: &str, stock: i64) -> anyhow::Result<()> {
        let path = format!("/api/v1/inventory/{}", crate::products::encode(product));
        let item = self.call(admin, reqwest::Method::GET, &path, None).await?;
        for warehouse in item["warehouses"].as_array().into_iter().flatten() {
            let mut available = warehouse["available"].as_i64().unwrap_or(0);
            while available < stock {
                // One adjustment may move at most a million units.
                let delta = (stock - available).min(1_000_000);
                self.call(
                    admin,
                    reqwest::Method::POST,
                    &format!("{path}/adjustments"),
                    Some(
                        &json!({"warehouse_id": warehouse["warehouse_id"], "delta": delta,
                        "reason": "bazaar bench checkout: stock cannot run out"}),
                    ),
                )
                .await?;
                available += delta;
            }
        }
        Ok(())
    }

    /// An order's status, `None` when it cannot be read now.
    async fn order(&self, token: &str, id: &str) -> Option<Outcome> {
        self.read_order(token, &format!("/api/v1/orders/{id}"))
            .await
    }

    /// The order once it is terminal, or still pending after the longest wait the orders
    /// service grants (5 s).
    async fn order_when_done(&self, token: &str, id: &str) -> Option<Outcome> {
        self.read_order(token, &format!("/api/v1/orders/{id}?wait=5"))
            .await
    }

    async fn read_order(&self, token: &str, path: &str) -> Option<Outcome> {
        let order = self
            .call(token, reqwest::Method::GET, path, None)
            .await
            .ok()?;
        Outcome::of(&order)
    }

    /// Signs in without a browser: the authorization code flow with PKCE through the login
    /// form, following the redirects by hand (keeping the cookies) until the one to the
    /// loopback redirect URI, whose code is then redeemed. Returns the access token.
    async fn sign_in(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let verifier = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        let state = uuid::Uuid::new_v4().simple().to_string();
        let authorize = reqwest::Url::parse_with_params(
            &format!("{}/oauth2/authorize", self.gateway),
            &[
                ("response_type", "code"),
                ("client_id", CLIENT_ID),
                ("redirect_uri", REDIRECT_URI),
                ("scope", "openid email"),
                ("state", state.as_str()),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )?;
        let mut cookies = Cookies::default();
        let mut response = self.send(|| self.http.get(authorize.clone())).await?;
        let mut code = None;
        for _ in 0..8 {
            cookies.keep(&response);
            if !response.status().is_redirection() {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                anyhow::bail!(
                    "signing in {email}: expected a redirect, got {status}: {}",
                    body.chars().take(300).collect::<String>()
                );
            }
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .context("a redirect without a location")?;
            let location = if location.starts_with('/') {
                format!("{}{location}", self.gateway)
            } else {
                location.to_owned()
            };
            if location.starts_with(REDIRECT_URI) {
                let url = reqwest::Url::parse(&location)?;
                let params: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
                if params.get("state") != Some(&state) {
                    anyhow::bail!("signing in {email}: the redirect's state does not match");
                }
                code = Some(params.get("code").cloned().with_context(|| {
                    format!(
                        "signing in {email}: refused: {}",
                        params.get("error").map(String::as_str).unwrap_or("no code")
                    )
                })?);
                break;
            }
            if reqwest::Url::parse(&location)?.path() == "/login" {
                let page = self
                    .send(|| cookies.apply(self.http.get(&location)))
                    .await?;
                cookies.keep(&page);
                let html = page.text().await?;
                let form = [
                    ("csrf", form_value(&html, "csrf")),
                    ("return_to", form_value(&html, "return_to")),
                    ("email", email.to_owned()),
                    ("password", password.to_owned()),
                ];
                response = self
                    .send(|| {
                        cookies.apply(
                            self.http
                                .post(format!("{}/login", self.gateway))
                                .form(&form),
                        )
                    })
                    .await?;
            } else {
                response = self
                    .send(|| cookies.apply(self.http.get(&location)))
                    .await?;
            }
        }
        let code = code.with_context(|| format!("signing in {email}: too many redirects"))?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", CLIENT_ID),
            ("code_verifier", verifier.as_str()),
        ];
        let response = self
            .send(|| {
                self.http
                    .post(format!("{}/oauth2/token", self.gateway))
                    .form(&form)
            })
            .await?;
        let status = response.status();
        let tokens: Value = response.json().await.unwrap_or(Value::Null);
        match tokens["access_token"].as_str() {
            Some(token) if status.is_success() => Ok(token.to_owned()),
            _ => {
                anyhow::bail!("signing in {email}: the token endpoint answered {status}: {tokens}")
            }
        }
    }
}

/// The few cookies a sign-in needs (CSRF and session), sent back as a browser would.
#[derive(Default)]
struct Cookies(BTreeMap<String, String>);

impl Cookies {
    fn keep(&mut self, response: &reqwest::Response) {
        for header in response.headers().get_all("set-cookie") {
            let Some(pair) = header.to_str().ok().and_then(|v| v.split(';').next()) else {
                continue;
            };
            if let Some((name, value)) = pair.split_once('=') {
                self.0
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.0.is_empty() {
            return request;
        }
        let header: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        request.header("cookie", header.join("; "))
    }
}

/// The value of the hidden field `name` in the login form, unescaped.
fn form_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(&marker)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn unix_ms() -> i64 {
    bazaar_kit::storage::now_ms()
}

fn print_report(r: &CheckoutReport) {
    println!(
        "checkout through {} ({} connections{}, {} shoppers, {:.1}s measured after {}s warm-up)\n",
        r.gateway,
        r.connections,
        match (r.closed_loop, r.prefer_wait) {
            (true, true) => ", closed loop, outcome with the placement",
            (true, false) => ", closed loop",
            _ => "",
        },
        r.users,
        r.window_seconds,
        r.warmup_seconds
    );
    let rows = vec![
        vec![
            "orders accepted (201/202)".to_owned(),
            r.accepted.to_string(),
            format!("{:.0}", r.accepted_per_second),
            format!("{:.2}", r.placement_p50_ms),
            format!("{:.2}", r.placement_p99_ms),
            format!("{:.2}", r.placement_max_ms),
        ],
        vec![
            "orders confirmed (placement -> confirmed)".to_owned(),
            r.confirmed_in_window.to_string(),
            format!("{:.0}", r.confirmed_per_second),
            format!("{:.2}", r.confirmed_p50_ms),
            format!("{:.2}", r.confirmed_p99_ms),
            format!("{:.2}", r.confirmed_max_ms),
        ],
    ];
    print!(
        "{}",
        output::table(
            &[
                "MEASUREMENT",
                "COUNT",
                "PER SECOND",
                "P50 MS",
                "P99 MS",
                "MAX MS"
            ],
            &rows
        )
    );
    println!(
        "\nwindow orders: {} confirmed, {} cancelled, {} still pending; the last confirmed {:.1}s after the window",
        r.window_orders_confirmed, r.window_orders_cancelled, r.window_orders_pending, r.drain_seconds
    );
    println!(
        "cart refills: {}; errors: {}",
        r.cart_refills,
        if r.errors.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", r.errors)
        }
    );
    if !r.cancel_reasons.is_empty() {
        println!("cancelled because: {:?}", r.cancel_reasons);
    }
    if !r.cpu_ms_per_order.is_empty() {
        // Idle processes (the servers of the other profile, say) only clutter the line.
        let mut by_cost: Vec<(&String, &f64)> = r
            .cpu_ms_per_order
            .iter()
            .filter(|(_, ms)| **ms >= 0.005)
            .collect();
        by_cost.sort_by(|a, b| b.1.total_cmp(a.1));
        let parts: Vec<String> = by_cost
            .iter()
            .map(|(process, ms)| format!("{process} {ms:.2}"))
            .collect();
        println!(
            "CPU per confirmed order on this machine: {:.2} ms ({})",
            r.cpu_ms_per_order_total,
            parts.join(", ")
        );
    }
}
