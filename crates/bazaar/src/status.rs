//! `bazaar status`: every registered instance, what the registry last heard from it, what its
//! own `/readyz` says right now, and, for the instances that consume events, how far behind each
//! consumer group is per source (the `bazaar_consumer_lag{group,source}` gauge of its
//! `/metrics`).

use std::time::Duration;

use anyhow::Context;
use bazaar_discovery::{Instance, RegistryClient};
use serde::Serialize;

use crate::cli::{Global, StatusArgs};
use crate::output;

/// The Prometheus gauge of consumer lag (`bazaar_messaging::lag`).
const CONSUMER_LAG: &str = "bazaar_consumer_lag";
/// Longest wait for one instance's `/readyz` or `/metrics`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
struct InstanceReport {
    #[serde(flatten)]
    instance: Instance,
    /// `ready`, `not_ready` or `unreachable`, from a live `/readyz` probe.
    probe: String,
    last_heartbeat_ago_ms: u64,
    /// Events each of the instance's consumer groups has still to apply, per source; empty
    /// for an instance that consumes nothing, `null` when its `/metrics` could not be read.
    consumer_lag: Option<Vec<ConsumerLag>>,
}

/// One consumer group's lag on one source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerLag {
    pub group: String,
    pub source: String,
    pub lag: i64,
}

pub async fn status(global: Global, args: StatusArgs) -> anyhow::Result<()> {
    let registry = RegistryClient::new(&global.registry);
    let snapshot = registry.snapshot().await.with_context(|| {
        format!(
            "cannot reach the registry at {} (is bazaar up? pass --registry to point elsewhere)",
            global.registry
        )
    })?;
    let http = reqwest::Client::new();
    let now = bazaar_kit::storage::now_ms() as u64;
    // Every instance is probed at once: a dead one costs its timeout once, not per instance.
    let probes = snapshot.services.into_values().flatten().map(|instance| {
        let http = http.clone();
        async move {
            let (probe, consumer_lag) =
                tokio::join!(readiness(&http, &instance), consumer_lag(&http, &instance));
            InstanceReport {
                last_heartbeat_ago_ms: now.saturating_sub(instance.last_heartbeat_ms),
                instance,
                probe: probe.to_owned(),
                consumer_lag,
            }
        }
    });
    let reports: Vec<InstanceReport> = futures::future::join_all(probes).await;
    let all_up = !reports.is_empty() && reports.iter().all(|r| r.probe == "ready");
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "registry": global.registry,
                "healthy": all_up,
                "instances": reports,
            }))?
        );
    } else {
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                vec![
                    r.instance.service.clone(),
                    r.instance.id.clone(),
                    r.instance.address.clone(),
                    r.instance.version.clone(),
                    format!("{:?}", r.instance.status).to_lowercase(),
                    r.probe.clone(),
                    format!("{:.1}s ago", r.last_heartbeat_ago_ms as f64 / 1000.0),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(
                &[
                    "SERVICE",
                    "INSTANCE",
                    "ADDRESS",
                    "VERSION",
                    "REGISTRY",
                    "PROBE",
                    "HEARTBEAT"
                ],
                &rows
            )
        );
        let lag_rows: Vec<Vec<String>> = reports
            .iter()
            .flat_map(|r| {
                r.consumer_lag.iter().flatten().map(|l| {
                    vec![
                        r.instance.service.clone(),
                        r.instance.id.clone(),
                        l.group.clone(),
                        l.source.clone(),
                        l.lag.to_string(),
                    ]
                })
            })
            .collect();
        if !lag_rows.is_empty() {
            println!("\nconsumer lag (events not yet applied):");
            print!(
                "{}",
                output::table(
                    &["SERVICE", "INSTANCE", "GROUP", "SOURCE", "LAG"],
                    &lag_rows
                )
            );
        }
        println!(
            "\n{} instance(s); {}",
            reports.len(),
            if all_up {
                "all healthy"
            } else {
                "NOT all healthy"
            }
        );
    }
    if args.strict && !all_up {
        anyhow::bail!("not every instance is healthy");
    }
    Ok(())
}

/// `ready`, `not_ready` or `unreachable`, from the instance's `/readyz` now.
async fn readiness(http: &reqwest::Client, instance: &Instance) -> &'static str {
    match http
        .get(format!("{}/readyz", instance.address))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => "ready",
        Ok(_) => "not_ready",
        Err(_) => "unreachable",
    }
}

/// The instance's consumer lag gauges, from its `/metrics`; `None` when unreadable.
async fn consumer_lag(http: &reqwest::Client, instance: &Instance) -> Option<Vec<ConsumerLag>> {
    let response = http
        .get(format!("{}/metrics", instance.address))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    Some(parse_consumer_lag(&response.text().await.ok()?))
}

/// The `bazaar_consumer_lag{group="...",source="..."} <value>` samples of a Prometheus text
/// exposition, sorted by group and source. Other metrics, comments and malformed samples are
/// skipped: a scrape is best effort and must not fail the whole status.
pub fn parse_consumer_lag(exposition: &str) -> Vec<ConsumerLag> {
    let mut out = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.trim().strip_prefix(CONSUMER_LAG) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = parse_labels(rest) else {
            continue;
        };
        let label = |name: &str| {
            labels
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let (Some(group), Some(source)) = (label("group"), label("source")) else {
            continue;
        };
        // Gauges are integers here, but the text format writes any number (`3`, `3.0`, `3e0`).
        let Some(lag) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
        else {
            continue;
        };
        out.push(ConsumerLag {
            group,
            source,
            lag: lag as i64,
        });
    }
    out.sort_by(|a, b| (&a.group, &a.source).cmp(&(&b.group, &b.source)));
    out
}

/// Parses `key="value",...}` (values escape `\\`, `\"` and `\n`) and returns the labels and
/// what follows the closing brace.
fn parse_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = rest.split_once('=')?;
        let mut chars = after_key.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        rest = &after_key[1 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_consumer_lag_gauges_and_nothing_else() {
        let text = "# HELP bazaar_consumer_lag Events a subscriber group has not applied yet.\n\
            # TYPE bazaar_consumer_lag gauge\n\
            bazaar_consumer_lag{group=\"notifications\",source=\"shipping\"} 0\n\
            bazaar_consumer_lag{group=\"notifications\",source=\"orders\"} 12\n\
            bazaar_consumer_lag_other{group=\"x\",source=\"y\"} 5\n\
            bazaar_outbox_unpublished 3\n\
            bazaar_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"} 7\n\
            bazaar_consumer_lag{source=\"pay\\\"ments\",group=\"g\"} 2.0 1700000000\n\
            bazaar_consumer_lag{group=\"broken\",source=\"x\"} not-a-number\n\
            bazaar_consumer_lag{group=\"unterminated} 1\n";
        assert_eq!(
            parse_consumer_lag(text),
            vec![
                ConsumerLag {
                    group: "g".into(),
                    source: "pay\"ments".into(),
                    lag: 2
                },
                ConsumerLag {
                    group: "notifications".into(),
                    source: "orders".into(),
                    lag: 12
                },
                ConsumerLag {
                    group: "notifications".into(),
                    source: "shipping".into(),
                    lag: 0
                },
            ]
        );
        assert!(parse_consumer_lag("").is_empty());
    }
}
