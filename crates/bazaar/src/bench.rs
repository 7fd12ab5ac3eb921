//! `bazaar bench gateway`: load the catalog directly and through the gateway with the same
//! number of keep-alive connections for the same time, and report throughput, latency
//! percentiles and the latency the gateway adds. Starts its own registry, catalog and gateway
//! (in a temporary data directory, on free ports) unless `--external` is given.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::cli::{BenchArgs, BenchCommand, Global};
use crate::output;
use crate::supervisor::{self, Planned};

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
    let BenchCommand::Gateway {
        connections,
        seconds,
        path,
        external,
    } = args.command;
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
        let ports = free_ports(3)?;
        let system = supervisor::System {
            registry_url: format!("http://127.0.0.1:{}", ports[0]),
            issuer: format!("http://127.0.0.1:{}", ports[2]),
        };
        for (service, port) in [
            (bazaar_registry::NAME, ports[0]),
            (bazaar_catalog::NAME, ports[1]),
            (bazaar_gateway::NAME, ports[2]),
        ] {
            let planned = Planned {
                label: service.to_owned(),
                service,
                port,
                data_dir: _data.join(service),
            };
            let log = _data.join(format!("{service}.log"));
            let mut child = supervisor::spawn(&planned, &system, None, Some(&log))?;
            supervisor::wait_ready(port, &mut child, Duration::from_secs(60)).await?;
            children.push(child);
        }
        (
            format!("http://127.0.0.1:{}", ports[1]),
            format!("http://127.0.0.1:{}", ports[2]),
        )
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

/// Runs `connections` keep-alive HTTP/1.1 connections, each sending GET `path` back to back
/// for `duration`.
pub async fn load(
    base: &str,
    path: &str,
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
        let path = path.to_owned();
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
                    let request = hyper::Request::get(&path)
                        .header(hyper::header::HOST, &authority)
                        .body(Empty::<Bytes>::new())
                        .expect("static request is valid");
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
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let index = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[index] as f64 / 1000.0
    };
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
