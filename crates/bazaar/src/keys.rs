//! `bazaar keys ...`: the signed-in developer's API keys for the public API, through the
//! gateway's developer routes (`/api/v1/developer/...`), with the developer service's own wire
//! types. A new key is printed once, exactly as the service shows it once.

use bazaar_developer::model::{CreatedKey, KeyList, KeyStatus, PlanList, UsageList};
use serde_json::json;

use crate::api::Api;
use crate::cli::{Global, KeysArgs, KeysCommand};
use crate::output;
use crate::products::encode;

fn status(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Revoked => "revoked",
        KeyStatus::Expired => "expired",
    }
}

fn quota(count: u64, limit: Option<u64>) -> String {
    match limit {
        Some(limit) => format!("{count}/{limit}"),
        None => format!("{count}/unlimited"),
    }
}

pub async fn keys(global: Global, args: KeysArgs) -> anyhow::Result<()> {
    // Everything but the (public) plans is about the signed-in user's keys.
    let api = match args.command {
        KeysCommand::Plans => return plans(&global).await,
        _ => Api::signed_in(&global).await?,
    };
    match args.command {
        KeysCommand::Plans => {}
        KeysCommand::List => {
            let list: KeyList = api.get("/api/v1/developer/keys").await?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .items
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.name.clone(),
                        k.plan.clone(),
                        k.prefix.clone(),
                        status(k.status).to_owned(),
                        k.created_at.clone(),
                        k.expires_at.clone().unwrap_or_else(|| "never".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &["ID", "NAME", "PLAN", "PREFIX", "STATUS", "CREATED", "EXPIRES"],
                    &rows
                )
            );
        }
        KeysCommand::Create { name, plan } => {
            let body = api
                .call(
                    reqwest::Method::POST,
                    "/api/v1/developer/keys",
                    Some(json!({"name": name, "plan": plan})),
                    &[],
                )
                .await?;
            let created: CreatedKey = serde_json::from_value(body)?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
                return Ok(());
            }
            println!(
                "created key {} ({}) on plan {}; expires {}",
                created.id,
                created.name,
                created.plan,
                created.expires_at.as_deref().unwrap_or("never")
            );
            println!();
            println!("  {}", created.key);
            println!();
            println!("This is the only time the key is shown: store it now.");
            println!("Send it as `x-api-key: <key>` to the gateway's public API.");
        }
        KeysCommand::Revoke { id } => {
            api.call(
                reqwest::Method::DELETE,
                &format!("/api/v1/developer/keys/{}", encode(&id)),
                None,
                &[],
            )
            .await?;
            if global.json {
                println!("{}", json!({"id": id, "status": "revoked"}));
            } else {
                println!("revoked key {id}");
            }
        }
        KeysCommand::Usage => {
            let usage: UsageList = api.get("/api/v1/developer/usage").await?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&usage)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = usage
                .items
                .iter()
                .map(|u| {
                    vec![
                        u.key_id.clone(),
                        u.name.clone(),
                        u.plan.clone(),
                        status(u.status).to_owned(),
                        quota(u.day_count, u.quota_per_day),
                        quota(u.month_count, u.quota_per_month),
                    ]
                })
                .collect();
            println!("usage on {} (month {}), UTC", usage.day, usage.month);
            print!(
                "{}",
                output::table(&["KEY", "NAME", "PLAN", "STATUS", "TODAY", "MONTH"], &rows)
            );
        }
    }
    Ok(())
}

/// The plans are public: no sign-in needed.
async fn plans(global: &Global) -> anyhow::Result<()> {
    let plans: PlanList = Api::anonymous(global)
        .get("/api/v1/developer/plans")
        .await?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&plans)?);
        return Ok(());
    }
    let limit = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    let rows: Vec<Vec<String>> = plans
        .items
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.plan.title.clone(),
                format!("{}/s (burst {})", p.plan.rate_per_second, p.plan.burst),
                limit(p.plan.quota_per_day),
                limit(p.plan.quota_per_month),
                p.plan
                    .trial_days
                    .map_or_else(|| "-".to_owned(), |d| format!("{d} days")),
                if p.plan.self_service {
                    "yes"
                } else {
                    "admin only"
                }
                .to_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "PLAN",
                "TITLE",
                "RATE",
                "PER DAY",
                "PER MONTH",
                "TRIAL",
                "SELF-SERVICE"
            ],
            &rows
        )
    );
    Ok(())
}
