//! `bazaar reconcile`: after any chaos, checks that every order is confirmed, cancelled or
//! pending with a reason, and that stock, payments and shipments agree with it (G9). It asks
//! the services directly (found through the registry, with the services' client credentials),
//! since these are their internal views.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use bazaar_discovery::{Discovery, RegistryClient};
use bazaar_kit::client::ServiceClient;
use bazaar_kit::config::{CommonConfig, Sources};
use serde_json::{json, Value};

use crate::cli::{Global, ReconcileArgs};

/// Reconcile has no settings of its own beyond the common ones (client credentials).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct NoSettings {}

pub async fn reconcile(global: Global, args: ReconcileArgs) -> anyhow::Result<()> {
    let (common, _): (CommonConfig, NoSettings) = Sources::default()
        .with_file(global.config.clone())
        .load(CommonConfig::defaults("reconcile", 0))?;
    let discovery = Discovery::start(RegistryClient::new(&global.registry));
    if !discovery.ready(Duration::from_secs(5)).await {
        anyhow::bail!(
            "cannot reach the registry at {} (is bazaar up?)",
            global.registry
        );
    }
    let client =
        ServiceClient::for_service(&common, discovery).with_timeout(Duration::from_secs(30));
    let report = check(&client).await?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} orders: {} confirmed, {} cancelled, {} pending",
            report["orders"], report["confirmed"], report["cancelled"], report["pending"]
        );
        for finding in report["findings"].as_array().into_iter().flatten() {
            println!("  ✗ {}", finding.as_str().unwrap_or_default());
        }
        if report["findings"].as_array().is_some_and(|f| f.is_empty()) {
            println!("  ✓ stock, payments and shipments agree with every order");
        }
    }
    let findings = report["findings"].as_array().map_or(0, Vec::len);
    if findings > 0 && !args.allow_findings {
        anyhow::bail!("{findings} inconsistencies found");
    }
    Ok(())
}

async fn get(client: &ServiceClient, service: &str, path: &str) -> anyhow::Result<Value> {
    client
        .get_json(service, path)
        .await
        .with_context(|| format!("cannot read {service}{path}"))
}

/// The report: counts and a list of findings (empty when everything agrees).
pub async fn check(client: &ServiceClient) -> anyhow::Result<Value> {
    let orders = get(client, "orders", "/internal/v1/orders?limit=100000").await?;
    let orders = orders["orders"].as_array().cloned().unwrap_or_default();
    let mut reservations: HashMap<String, String> = HashMap::new();
    for status in ["reserved", "committed", "released"] {
        let page = get(
            client,
            "inventory",
            &format!("/internal/v1/reservations?status={status}"),
        )
        .await?;
        for r in page["reservations"].as_array().into_iter().flatten() {
            if let Some(key) = r["key"].as_str() {
                reservations.insert(
                    key.to_owned(),
                    r["status"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
    }
    let mut findings: Vec<String> = Vec::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for order in &orders {
        let id = order["id"].as_str().unwrap_or_default();
        let status = order["status"].as_str().unwrap_or_default();
        *counts
            .entry(match status {
                "confirmed" => "confirmed",
                "cancelled" => "cancelled",
                _ => "pending",
            })
            .or_default() += 1;
        let payments = get(
            client,
            "payments",
            &format!("/internal/v1/payments?order_id={id}"),
        )
        .await?;
        let payments = payments["payments"].as_array().cloned().unwrap_or_default();
        let shipments = get(
            client,
            "shipping",
            &format!("/internal/v1/shipments?order_id={id}"),
        )
        .await?;
        let shipments = shipments["shipments"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let reservation = reservations.get(id).map(String::as_str);
        let in_state = |s: &str| payments.iter().filter(|p| p["status"] == s).count();
        match status {
            "confirmed" => {
                if reservation != Some("committed") {
                    findings.push(format!(
                        "order {id} is confirmed but its stock is {}",
                        reservation.unwrap_or("not reserved")
                    ));
                }
                let captured: Vec<&Value> = payments
                    .iter()
                    .filter(|p| p["status"] == "captured")
                    .collect();
                if captured.len() != 1 {
                    findings.push(format!(
                        "order {id} is confirmed with {} captured payments (want 1)",
                        captured.len()
                    ));
                } else if captured[0]["amount"]["amount_minor"] != order["total"]["amount_minor"] {
                    findings.push(format!(
                        "order {id}: captured {} but the total is {}",
                        captured[0]["amount"], order["total"]
                    ));
                }
                if shipments.len() != 1 {
                    findings.push(format!(
                        "order {id} is confirmed with {} shipments (want 1)",
                        shipments.len()
                    ));
                }
            }
            "cancelled" => {
                if matches!(reservation, Some("reserved") | Some("committed")) {
                    findings.push(format!(
                        "order {id} is cancelled but its stock is still {}",
                        reservation.unwrap_or_default()
                    ));
                }
                let held = in_state("authorized") + in_state("captured") + in_state("pending");
                if held > 0 {
                    findings.push(format!(
                        "order {id} is cancelled but {held} payment(s) still hold money"
                    ));
                }
                if !shipments.is_empty() {
                    findings.push(format!("order {id} is cancelled but has a shipment"));
                }
            }
            _ => {
                if order["status_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty()
                {
                    findings.push(format!("order {id} is pending without a reason"));
                }
            }
        }
        if in_state("captured") > 0 && status != "confirmed" {
            findings.push(format!("order {id} is {status} but money was captured"));
        }
    }
    let known: std::collections::HashSet<&str> =
        orders.iter().filter_map(|o| o["id"].as_str()).collect();
    for (key, status) in &reservations {
        if status == "reserved" && !known.contains(key.as_str()) {
            findings.push(format!("reservation {key} holds stock for no order"));
        }
    }
    Ok(json!({
        "orders": orders.len(),
        "confirmed": counts.get("confirmed").copied().unwrap_or(0),
        "cancelled": counts.get("cancelled").copied().unwrap_or(0),
        "pending": counts.get("pending").copied().unwrap_or(0),
        "findings": findings,
    }))
}
