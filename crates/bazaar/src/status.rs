//! `bazaar status`: every registered instance, what the registry last heard from it, and what
//! its own `/readyz` says right now.

use std::time::Duration;

use anyhow::Context;
use bazaar_discovery::{Instance, RegistryClient};
use serde::Serialize;

use crate::cli::{Global, StatusArgs};
use crate::output;

#[derive(Debug, Serialize)]
struct InstanceReport {
    #[serde(flatten)]
    instance: Instance,
    /// `ready`, `not_ready` or `unreachable`, from a live `/readyz` probe.
    probe: String,
    last_heartbeat_ago_ms: u64,
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
    let mut reports = Vec::new();
    for instance in snapshot.services.into_values().flatten() {
        let probe = match http
            .get(format!("{}/readyz", instance.address))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => "ready",
            Ok(_) => "not_ready",
            Err(_) => "unreachable",
        };
        reports.push(InstanceReport {
            last_heartbeat_ago_ms: now.saturating_sub(instance.last_heartbeat_ms),
            instance,
            probe: probe.to_owned(),
        });
    }
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
