//! `bazaar audit verify`: reads every service's audit log straight from its database (not
//! through the service, so a compromised service cannot vouch for itself) and checks the hash
//! chain of each.

use std::path::Path;

use anyhow::Context;
use bazaar_kit::audit::{read_records, verify_chain};
use sqlx::any::AnyPoolOptions;

use crate::cli::{AuditArgs, AuditCommand, Global};
use crate::output;

pub async fn audit(global: Global, args: AuditArgs) -> anyhow::Result<()> {
    let AuditCommand::Verify {
        data_dir,
        database_url,
    } = args.command;
    sqlx::any::install_default_drivers();
    let targets: Vec<(String, String)> = match database_url {
        Some(url) => vec![("(given)".to_owned(), url)],
        None => sqlite_databases(&data_dir)?,
    };
    let mut rows = Vec::new();
    let mut report = Vec::new();
    let mut broken = false;
    for (service, url) in targets {
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .with_context(|| format!("cannot open {}", bazaar_kit::storage::redact(&url)))?;
        let records = match read_records(&pool, 0, i64::MAX).await {
            Ok(records) => records,
            // A service that keeps no audit log has no table: nothing to verify.
            Err(_) => continue,
        };
        let outcome = verify_chain(&records);
        broken |= outcome.is_err();
        rows.push(vec![
            service.clone(),
            records.len().to_string(),
            match &outcome {
                Ok(()) => "intact".to_owned(),
                Err(e) => format!("BROKEN at record {}: {}", e.seq, e.reason),
            },
        ]);
        report.push(serde_json::json!({
            "service": service,
            "records": records.len(),
            "intact": outcome.is_ok(),
            "error": outcome.err().map(|e| e.to_string()),
        }));
        pool.close().await;
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if rows.is_empty() {
        println!("no audit logs found");
    } else {
        print!("{}", output::table(&["SERVICE", "RECORDS", "CHAIN"], &rows));
    }
    if broken {
        anyhow::bail!("an audit chain is broken: records were modified, removed or reordered");
    }
    Ok(())
}

/// `<data-dir>/<service>/<service>.db` for every service directory.
fn sqlite_databases(data_dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(data_dir)
        .with_context(|| format!("cannot read the data directory {}", data_dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let file = entry.path().join(format!("{name}.db"));
        if file.is_file() {
            found.push((name, format!("sqlite://{}?mode=ro", file.display())));
        }
    }
    found.sort();
    Ok(found)
}
