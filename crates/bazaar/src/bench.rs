//! Load generators. `bazaar bench gateway`: load the catalog directly and through the gateway
//! with the same number of keep-alive connections for the same time, and report throughput,
//! latency percentiles and the latency the gateway adds; it starts its own registry, catalog and
//! gateway (in a temporary data directory, on free ports) unless `--external` is given.
//! `bazaar bench auth`: token grants and JWT-verified requests. `bazaar bench checkout`
//! ([`checkout`]): orders through the saga against a running system.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::cli::{BenchArgs, BenchCommand, Global};
use crate::output;
use crate::supervisor::{self, Planned};

mod checkout;
mod cpu;

/// Result of one load run.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub async fn bench(global: Global, args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Gateway {
            connections,
            seconds,
            path,
            external,
        } => gateway_bench(global, connections, seconds, path, external).await,
        BenchCommand::Auth {
            connections,
            seconds,
        } => auth_bench(global, connections, seconds).await,
        BenchCommand::Checkout(args) => checkout::run(global, args).await,
    }
}

/// Starts `services` (registry first) as `bazaar serve` children on free ports in `data`;
/// returns the children and their base URLs, in the same order.
async fn start_system(
    data: &std::path::Path,
    services: &[&'static str],
) -> anyhow::Result<(Vec<tokio::process::Child>, Vec<String>)> {
    let ports = free_ports(services.len())?;
    let gateway_port = services
        .iter()
        .position(|s| *s == bazaar_gateway::NAME)
        .map_or(ports[0], |i| ports[i]);
    let system = supervisor::System {
        registry_url: format!("http://127.0.0.1:{}", ports[0]),
        issuer: format!("http://127.0.0.1:{gateway_port}"),
        // The load comes from one address: lift the anonymous per-address limit, or the
        // benchmark would measure the limiter (50/s by default) instead of the gateway.
        env: vec![
            (
                "BAZAAR_GATEWAY__ANONYMOUS_RATE_PER_SECOND".into(),
                "1000000".into(),
            ),
            ("BAZAAR_GATEWAY__ANONYMOUS_BURST".into(), "1000000".into()),
        ],
    };
    let mut children = Vec::new();
    for (service, port) in services.iter().zip(&ports) {
        let planned = Planned {
            label: (*service).to_owned(),
            service,
            port: *port,
            data_dir: data.join(service),
            // As the figures in docs/performance.md for this bench were taken.
            cpu: None,
        };
        let log = data.join(format!("{service}.log"));
        let mut child = supervisor::spawn(&planned, &system, None, Some(&log))?;
        supervisor::wait_ready(*port, &mut child, Duration::from_secs(60)).await?;
        children.push(child);
    }
    let urls = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    Ok((children, urls))
}

async fn auth_bench(global: Global, connections: usize, seconds: u64) -> anyhow::Result<()> {
    use base64::Engine;
    let data = tempfile_dir()?;
    let (mut children, urls) = start_system(
        &data,
        &[
            bazaar_registry::NAME,
            bazaar_catalog::NAME,
            bazaar_identity::NAME,
            bazaar_gateway::NAME,
        ],
    )
    .await?;
    let (identity, gateway) = (urls[2].clone(), urls[3].clone());
    let (client_id, secret) = ("demo-partner", "demo-partner-secret");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"))
    );
    let grant = Probe {
        method: hyper::Method::POST,
        path: "/oauth2/token".into(),
        headers: vec![
            ("authorization".into(), basic),
            (
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
        ],
        body: Bytes::from_static(b"grant_type=client_credentials&scope=partner"),
    };
    let token: serde_json::Value = reqwest::Client::new()
        .post(format!("{gateway}/oauth2/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "client_credentials"), ("scope", "partner")])
        .send()
        .await?
        .json()
        .await?;
    let token = token["access_token"]
        .as_str()
        .context("no access token from the token endpoint")?
        .to_owned();
    let product = "kitchen-espresso-cup-set";
    let anonymous = Probe::get(&format!("/api/v1/products/{product}"));
    let with_jwt = Probe::get(&format!("/api/v1/partner/products/{product}"))
        .header("authorization", &format!("Bearer {token}"));

    let duration = Duration::from_secs(seconds.max(1));
    eprintln!("warming up...");
    for (base, probe) in [(&identity, &grant), (&gateway, &with_jwt)] {
        load_probe(base, probe, connections, Duration::from_secs(1)).await?;
    }
    eprintln!(
        "measuring {}s each with {connections} connections",
        duration.as_secs()
    );
    let mut reports = Vec::new();
    for (label, base, probe) in [
        (
            "client-credentials grant (identity direct)",
            &identity,
            &grant,
        ),
        (
            "client-credentials grant (through gateway)",
            &gateway,
            &grant,
        ),
        ("GET product, anonymous (gateway)", &gateway, &anonymous),
        (
            "GET product, partner JWT verified (gateway)",
            &gateway,
            &with_jwt,
        ),
    ] {
        let mut report = load_probe(base, probe, connections, duration).await?;
        report.target = label.to_owned();
        reports.push(report);
    }
    for child in &mut children {
        supervisor::stop(child, Duration::from_secs(5)).await;
    }
    let _ = std::fs::remove_dir_all(&data);
    print_reports(&global, &reports)
}

fn print_reports(global: &Global, reports: &[LoadReport]) -> anyhow::Result<()> {
    if global.json {
        println!("{}", serde_json::to_string_pretty(reports)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.target.clone(),
                format!("{:.0}", r.requests_per_second),
                format!("{:.2}", r.p50_ms),
                format!("{:.2}", r.p99_ms),
                r.errors.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["MEASUREMENT", "PER SECOND", "P50 MS", "P99 MS", "ERRORS"],
            &rows
        )
    );
    Ok(())
}

async fn gateway_bench(
    global: Global,
    connections: usize,
    seconds: u64,
    path: String,
    external: bool,
) -> anyhow::Result<()> {
    let mut children = Vec::new();
    let _data = tempfile_dir()?;
    let (direct_base, gateway_base) = if external {
        let registry = bazaar_discovery::RegistryClient::new(&global.registry);
        let snapshot = registry
            .snapshot()
            .await
            .context("cannot reach the registry for the catalog's address")?;
        let catalog = snapshot
            .routable(bazaar_catalog::NAME)
            .into_iter()
            .next()
            .context("no catalog instance is registered")?;
        (catalog.address, global.gateway.clone())
    } else {
        let (started, urls) = start_system(
            &_data,
            &[
                bazaar_registry::NAME,
                bazaar_catalog::NAME,
                bazaar_gateway::NAME,
            ],
        )
        .await?;
        children = started;
        (urls[1].clone(), urls[2].clone())
    };

    let duration = Duration::from_secs(seconds.max(1));
    eprintln!("warming up...");
    load(&direct_base, &path, connections, Duration::from_secs(1)).await?;
    load(&gateway_base, &path, connections, Duration::from_secs(1)).await?;
    eprintln!(
        "measuring {}s each with {connections} connections: GET {path}",
        duration.as_secs()
    );
    let mut direct = load(&direct_base, &path, connections, duration).await?;
    direct.target = "catalog (direct)".into();
    let mut via = load(&gateway_base, &path, connections, duration).await?;
    via.target = "gateway -> catalog".into();

    for child in &mut children {
        supervisor::stop(child, Duration::from_secs(5)).await;
    }
    let _ = std::fs::remove_dir_all(&_data);

    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": path, "connections": connections, "seconds": duration.as_secs(),
                "direct": direct, "gateway": via,
                "added_p50_ms": via.p50_ms - direct.p50_ms,
                "added_p99_ms": via.p99_ms - direct.p99_ms,
            }))?
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = [&direct, &via]
        .iter()
        .map(|r| {
            vec![
                r.target.clone(),
                format!("{:.0}", r.requests_per_second),
                format!("{:.2}", r.p50_ms),
                format!("{:.2}", r.p90_ms),
                format!("{:.2}", r.p99_ms),
                format!("{:.2}", r.max_ms),
                r.errors.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["TARGET", "REQ/S", "P50 MS", "P90 MS", "P99 MS", "MAX MS", "ERRORS"],
            &rows
        )
    );
    println!(
        "\ngateway adds {:.2} ms at p50 and {:.2} ms at p99; throughput {:.0}% of direct",
        via.p50_ms - direct.p50_ms,
        via.p99_ms - direct.p99_ms,
        100.0 * via.requests_per_second / direct.requests_per_second.max(1.0)
    );
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("bazaar-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// One request to repeat.
#[derive(Debug, Clone)]
pub struct Probe {
    pub method: hyper::Method,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Probe {
    pub fn get(path: &str) -> Self {
        Self {
            method: hyper::Method::GET,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Runs `connections` keep-alive HTTP/1.1 connections, each sending GET `path` back to back
/// for `duration`.
pub async fn load(
    base: &str,
    path: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadReport> {
    load_probe(base, &Probe::get(path), connections, duration).await
}

/// Runs `connections` keep-alive HTTP/1.1 connections, each sending `probe` back to back for
/// `duration`; a non-2xx answer counts as an error.
pub async fn load_probe(
    base: &str,
    probe: &Probe,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadReport> {
    let authority = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let authority = authority.clone();
        let probe = probe.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            'connect: while Instant::now() < deadline {
                let Ok(stream) = tokio::net::TcpStream::connect(&authority).await else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let Ok((mut sender, connection)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    errors += 1;
                    continue;
                };
                tokio::spawn(connection);
                while Instant::now() < deadline {
                    let mut request = hyper::Request::builder()
                        .method(probe.method.clone())
                        .uri(&probe.path)
                        .header(hyper::header::HOST, &authority);
                    for (name, value) in &probe.headers {
                        request = request.header(name, value);
                    }
                    let request = request
                        .body(Full::new(probe.body.clone()))
                        .expect("a probe is a valid request");
                    let sent = Instant::now();
                    match sender.send_request(request).await {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            if response.into_body().collect().await.is_err() || !ok {
                                errors += 1;
                            } else {
                                latencies.push(sent.elapsed().as_micros() as u32);
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            continue 'connect;
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await?;
        all.extend(latencies);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| percentile_ms(&all, p);
    Ok(LoadReport {
        target: base.to_owned(),
        requests: all.len() as u64,
        errors,
        seconds: elapsed,
        requests_per_second: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: all.last().map_or(0.0, |m| *m as f64 / 1000.0),
    })
}

/// The `p` quantile (0..=1, nearest rank) of `sorted` microseconds, in milliseconds; 0 when
/// empty.
pub fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1000.0
}
