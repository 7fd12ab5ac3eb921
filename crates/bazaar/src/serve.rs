//! `bazaar serve <service>`: one service in this process, until Ctrl-C or SIGTERM.

use anyhow::Context;
use bazaar_kit::config::Sources;

use crate::cli::{Global, ServeArgs};
use crate::services;

pub async fn serve(global: Global, args: ServeArgs) -> anyhow::Result<()> {
    let spec = services::find(&args.service).with_context(|| {
        format!(
            "unknown service `{}`; known services: {}",
            args.service,
            services::names().join(", ")
        )
    })?;
    let mut sources = Sources::default().with_file(global.config);
    if let Some(port) = args.port {
        sources = sources.set("port", port);
    }
    if let Some(host) = args.host {
        sources = sources.set("host", host);
    }
    if let Some(dir) = args.data_dir {
        sources = sources.set("data_dir", dir.display().to_string());
    }
    if let Some(url) = args.database_url {
        sources = sources.set("database_url", url);
    }
    let outcome = async {
        let service = (spec.build)(sources).await?;
        let listener = service.bind().await?;
        service
            .run(listener, bazaar_kit::server::shutdown_signal())
            .await
    }
    .await;
    // The log is written by a background thread: let it finish before the process ends.
    bazaar_kit::telemetry::flush_logs();
    outcome
}
