//! `bazaar up`: runs every service as its own OS process (`bazaar serve <name>`), waits until
//! each is ready, prints where everything is, restarts a process that dies (with backoff), and
//! on Ctrl-C or SIGTERM stops them all: gateway first, registry last, none left behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::{Global, UpArgs};
use crate::output;
use crate::services::{self, ServiceSpec};

/// One process to run.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Name shown in output (`catalog`, `catalog-2`).
    pub label: String,
    pub service: &'static str,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The one CPU this process runs on, or `None` to let the OS place its threads.
    pub cpu: Option<usize>,
}

/// Chooses the services and their ports.
pub fn plan(args: &UpArgs) -> anyhow::Result<Vec<Planned>> {
    let cpus = if args.no_pin_cpus {
        Vec::new()
    } else {
        allowed_cpus()
    };
    plan_on(args, &cpus)
}

/// [`plan`], placing the processes round robin on `cpus` (in start order) when there are two
/// or more of them, and nowhere in particular otherwise.
///
/// Why pin: a service's threads hand work to each other all the time (tokio's workers, the
/// thread sqlx runs each SQLite connection on, the log writer). Left to roam, they land on
/// different CPUs and every hand-off becomes a cross-CPU wake-up; kept on one CPU, the same
/// checkout costs about a quarter less CPU (docs/performance.md). Several processes share a
/// CPU when there are fewer CPUs than processes, and the kernel still balances the threads of
/// processes on the same CPU.
fn plan_on(args: &UpArgs, cpus: &[usize]) -> anyhow::Result<Vec<Planned>> {
    for name in args.only.iter().chain(&args.without) {
        if services::find(name).is_none() {
            anyhow::bail!(
                "unknown service `{name}`; known services: {}",
                services::names().join(", ")
            );
        }
    }
    let wanted = |spec: &ServiceSpec| {
        spec.name == bazaar_registry::NAME
            || ((args.only.is_empty() || args.only.iter().any(|n| n == spec.name))
                && !args.without.iter().any(|n| n == spec.name))
    };
    let mut next_port = args.base_port;
    let mut planned = Vec::new();
    for spec in services::SERVICES.iter().filter(|s| wanted(s)) {
        let replicas = if spec.replicable {
            args.replicas.max(1)
        } else {
            1
        };
        for replica in 1..=replicas {
            let port = if spec.name == bazaar_gateway::NAME {
                args.port
            } else {
                let port = next_port;
                next_port += 1;
                if next_port == args.port {
                    next_port += 1;
                }
                port
            };
            planned.push(Planned {
                label: if replica == 1 {
                    spec.name.to_owned()
                } else {
                    format!("{}-{replica}", spec.name)
                },
                service: spec.name,
                port,
                data_dir: args.data_dir.join(spec.name),
                cpu: (cpus.len() > 1).then(|| cpus[planned.len() % cpus.len()]),
            });
        }
    }
    Ok(planned)
}

/// The CPUs this process may run on (its children inherit the same set), in order; empty
/// where that cannot be read.
#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// What every process of one system shares.
#[derive(Debug, Clone)]
pub struct System {
    pub registry_url: String,
    /// The gateway's public URL: the identity provider's issuer.
    pub issuer: String,
    /// Further configuration for every process, as `BAZAAR_...` variables.
    pub env: Vec<(String, String)>,
}

/// Settings that depend on where other processes of the plan listen.
pub fn system_env(planned: &[Planned]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    // The card processor is an outside system: payments reaches it by URL, not by registry.
    if let Some(processor) = planned.iter().find(|p| p.service == bazaar_processor::NAME) {
        env.push((
            "BAZAAR_PAYMENTS__PROCESSOR_URL".to_owned(),
            format!("http://127.0.0.1:{}", processor.port),
        ));
    }
    env
}

/// Fails, naming the port and its service, if any planned port is taken.
fn check_ports(planned: &[Planned]) -> anyhow::Result<()> {
    for p in planned {
        if std::net::TcpListener::bind(("127.0.0.1", p.port)).is_err() {
            anyhow::bail!(
                "port {} (for {}) is already in use: stop whatever holds it, or choose other ports with --port / --base-port",
                p.port,
                p.label
            );
        }
    }
    Ok(())
}

/// Starts one `bazaar serve` child whose output is prefixed with its label (or written to
/// `log_file`). The child is killed if this process dies, so no orphan outlives `up`.
pub fn spawn(
    planned: &Planned,
    system: &System,
    config: Option<&Path>,
    log_file: Option<&Path>,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the bazaar executable")?;
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .arg(planned.service)
        .arg("--port")
        .arg(planned.port.to_string())
        .arg("--data-dir")
        .arg(&planned.data_dir)
        .env("BAZAAR_REGISTRY_URL", &system.registry_url)
        // Tokens are issued for, and checked against, the gateway's public URL.
        .env("BAZAAR_ISSUER", &system.issuer)
        .envs(system.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    if let Some(log_file) = log_file {
        // The service appends its log to the file itself; what reaches the pipes below is
        // only what bypasses the logger (a panic's message).
        command.env("BAZAAR_LOG_FILE", log_file);
    }
    prepare_child(&mut command, planned.cpu);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", planned.label))?;
    let label = planned.label.clone();
    let sink = log_file.map(Path::to_owned);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward(label.clone(), stdout, sink.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward(label, stderr, sink));
    }
    Ok(child)
}

/// Between fork and exec: the child gets SIGTERM when this process dies (so no orphan outlives
/// `up`, even after a kill -9 of `up`) and, with `cpu`, is kept on that CPU where the kernel
/// allows it (every thread it starts inherits the affinity, and tokio sizes its worker pool
/// from it: one worker).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn prepare_child(command: &mut Command, cpu: Option<usize>) {
    let cpu_set = cpu.and_then(|cpu| {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).ok().map(|()| set)
    });
    // SAFETY: prctl(PR_SET_PDEATHSIG) and sched_setaffinity are async-signal-safe system calls
    // that touch no memory of the parent (the CPU set is built before the fork).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)?;
            if let Some(set) = &cpu_set {
                // Best effort: pinning only saves CPU, so a CPU that has gone away since `up`
                // planned (hot-unplugged, a shrunk cpuset) or a sandbox that forbids the call
                // leaves the process unpinned instead of unable to start.
                let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn prepare_child(_command: &mut Command, _cpu: Option<usize>) {}

async fn forward(
    label: String,
    stream: impl tokio::io::AsyncRead + Unpin,
    log_file: Option<PathBuf>,
) {
    let mut lines = BufReader::new(stream).lines();
    let mut file = match &log_file {
        Some(path) => tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .ok(),
        None => None,
    };
    while let Ok(Some(line)) = lines.next_line().await {
        match file.as_mut() {
            Some(f) => {
                let _ = f.write_all(format!("{line}\n").as_bytes()).await;
            }
            None => println!("{label:<12}| {line}"),
        }
    }
}

/// Polls `http://127.0.0.1:<port>/readyz` until it answers 200, the child exits, or `timeout`.
pub async fn wait_ready(port: u16, child: &mut Child, timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("exited with {status} before becoming ready");
        }
        if let Ok(response) = http
            .get(&url)
            .timeout(Duration::from_millis(500))
            .send()
            .await
        {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("not ready after {}s ({url})", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL.
pub async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

struct Supervised {
    planned: Planned,
    pid: Arc<AtomicU32>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

pub async fn up(global: Global, args: UpArgs) -> anyhow::Result<()> {
    let planned = plan(&args)?;
    check_ports(&planned)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let logs_dir = args.data_dir.join("logs");
    if args.log_files {
        std::fs::create_dir_all(&logs_dir)?;
    }
    let registry_port = planned
        .iter()
        .find(|p| p.service == bazaar_registry::NAME)
        .map(|p| p.port)
        .context("the registry is always planned")?;
    let system = System {
        registry_url: format!("http://127.0.0.1:{registry_port}"),
        issuer: format!("http://127.0.0.1:{}", args.port),
        env: system_env(&planned),
    };
    let shutting_down = Arc::new(AtomicBool::new(false));
    println!(
        "starting {} processes, data in {}",
        planned.len(),
        args.data_dir.display()
    );

    let mut supervised: Vec<Supervised> = Vec::new();
    let started = Instant::now();
    let outcome: anyhow::Result<()> = async {
        for p in &planned {
            let log_file = args
                .log_files
                .then(|| logs_dir.join(format!("{}.log", p.label)));
            let mut child = spawn(p, &system, global.config.as_deref(), log_file.as_deref())?;
            // Services need the registry; the gateway is ready only once it has a view of it.
            wait_ready(p.port, &mut child, Duration::from_secs(60))
                .await
                .with_context(|| format!("{} did not start", p.label))?;
            let pid = Arc::new(AtomicU32::new(child.id().unwrap_or_default()));
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(keep_running(
                p.clone(),
                child,
                system.clone(),
                global.config.clone(),
                log_file,
                pid.clone(),
                stop_rx,
                shutting_down.clone(),
            ));
            supervised.push(Supervised {
                planned: p.clone(),
                pid,
                stop: stop_tx,
                task,
            });
        }
        Ok(())
    }
    .await;

    if let Err(error) = outcome {
        stop_all(&mut supervised, &shutting_down).await;
        return Err(error);
    }

    print_ready(&supervised, &args, started.elapsed());
    bazaar_kit::server::shutdown_signal().await;
    println!("stopping...");
    stop_all(&mut supervised, &shutting_down).await;
    println!("all services stopped");
    Ok(())
}

async fn stop_all(supervised: &mut Vec<Supervised>, shutting_down: &AtomicBool) {
    shutting_down.store(true, Ordering::SeqCst);
    // Reverse start order: the gateway stops taking traffic first, the registry goes last.
    while let Some(s) = supervised.pop() {
        let _ = s.stop.send(true);
        let _ = s.task.await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn keep_running(
    planned: Planned,
    mut child: Child,
    system: System,
    config: Option<PathBuf>,
    log_file: Option<PathBuf>,
    pid: Arc<AtomicU32>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    shutting_down: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let since = Instant::now();
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = exited else {
            stop_child(&mut child).await;
            return;
        };
        if shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        // A process that ran a good while was healthy: restart it quickly.
        if since.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        println!(
            "{:<12}| process exited ({status}); restarting in {}ms",
            planned.label,
            backoff.as_millis()
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
        match spawn(&planned, &system, config.as_deref(), log_file.as_deref()) {
            Ok(new_child) => {
                pid.store(new_child.id().unwrap_or_default(), Ordering::Relaxed);
                println!(
                    "{:<12}| restarted (pid {})",
                    planned.label,
                    new_child.id().unwrap_or_default()
                );
                child = new_child;
            }
            Err(error) => println!("{:<12}| restart failed: {error:#}", planned.label),
        }
    }
}

async fn stop_child(child: &mut Child) {
    stop(child, Duration::from_secs(15)).await;
}

fn print_ready(supervised: &[Supervised], args: &UpArgs, took: Duration) {
    let rows: Vec<Vec<String>> = supervised
        .iter()
        .map(|s| {
            vec![
                s.planned.label.clone(),
                format!("http://127.0.0.1:{}", s.planned.port),
                "ready".to_owned(),
                s.pid.load(Ordering::Relaxed).to_string(),
            ]
        })
        .collect();
    let gateway = format!("http://127.0.0.1:{}", args.port);
    println!();
    println!(
        "bazaar is up: {} processes ready in {:.1}s",
        supervised.len(),
        took.as_secs_f64()
    );
    println!();
    print!(
        "{}",
        output::table(&["SERVICE", "ADDRESS", "STATE", "PID"], &rows)
    );
    println!();
    let has_gateway = supervised
        .iter()
        .any(|s| s.planned.service == bazaar_gateway::NAME);
    if has_gateway {
        for (what, url) in [
            ("storefront", format!("{gateway}/")),
            ("admin console", format!("{gateway}/admin")),
            ("developers", format!("{gateway}/developers")),
            ("products", format!("{gateway}/api/v1/products")),
            ("API docs", format!("{gateway}/api/docs")),
            ("OpenAPI", format!("{gateway}/api/openapi.json")),
            ("health", format!("{gateway}/readyz")),
        ] {
            println!("  {what:<16}{url}");
        }
    }
    println!("  {:<16}bazaar status", "status");
    if supervised
        .iter()
        .any(|s| s.planned.service == bazaar_identity::NAME)
    {
        println!();
        println!("  demo accounts (development defaults):");
        for (who, (email, password)) in [
            ("customer", bazaar_identity::DEMO_CUSTOMER),
            ("admin", bazaar_identity::DEMO_ADMIN),
        ] {
            println!("    {who:<10}{email:<24}{password}");
        }
    }
    println!();
    println!("press Ctrl-C to stop");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(replicas: u16) -> UpArgs {
        UpArgs {
            port: 8080,
            data_dir: PathBuf::from("/tmp/bazaar-plan-test"),
            only: Vec::new(),
            without: Vec::new(),
            base_port: 8081,
            replicas,
            log_files: false,
            no_pin_cpus: false,
        }
    }

    #[test]
    fn processes_are_placed_round_robin_on_the_allowed_cpus() {
        let planned = plan_on(&args(2), &[3, 5, 7]).expect("plan");
        let cpus: Vec<Option<usize>> = planned.iter().map(|p| p.cpu).collect();
        let expected: Vec<Option<usize>> =
            (0..planned.len()).map(|i| Some([3, 5, 7][i % 3])).collect();
        assert_eq!(cpus, expected);
        // Every CPU gets work, replicas included.
        assert!(planned
            .iter()
            .any(|p| p.label == "catalog-2" && p.cpu.is_some()));
    }

    #[test]
    fn one_cpu_or_none_known_pins_nothing() {
        for cpus in [&[][..], &[0][..]] {
            let planned = plan_on(&args(1), cpus).expect("plan");
            assert!(planned.iter().all(|p| p.cpu.is_none()), "{cpus:?}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn no_pin_cpus_pins_nothing_and_the_default_uses_the_allowed_cpus() {
        let mut unpinned = args(1);
        unpinned.no_pin_cpus = true;
        assert!(plan(&unpinned)
            .expect("plan")
            .iter()
            .all(|p| p.cpu.is_none()));
        let allowed = allowed_cpus();
        assert!(
            !allowed.is_empty(),
            "sched_getaffinity reads this process's CPUs"
        );
        let pinned = plan(&args(1)).expect("plan");
        if allowed.len() > 1 {
            assert!(pinned
                .iter()
                .all(|p| p.cpu.is_some_and(|cpu| allowed.contains(&cpu))));
        }
    }
}
