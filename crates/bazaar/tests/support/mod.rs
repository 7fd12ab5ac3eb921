//! Helpers shared by the tests that run real bazaar processes, and the one place that says what
//! the scale-out test profile is ([`Profile`]).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bazaar");

/// A child process killed when dropped, so a failing test leaves nothing behind.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    free_port_range(1)
}

/// A run of `count` consecutive free ports, below the kernel's ephemeral range (32768 and up):
/// the many outbound connections of a running system take ephemeral ports, and one of them
/// could otherwise take a planned port before its service binds it.
///
/// Ranges handed out in this test process are remembered and never handed out again: tests run
/// side by side, and a range is only probed here while its system binds it later, so two tests
/// drawing overlapping ranges would both find them free and then collide.
pub fn free_port_range(count: u16) -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<std::ops::Range<u16>>> =
        std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..200 {
        let base = fastrand::u16(10_000..32_000 - count);
        let range = base..base + count;
        let overlaps = handed_out
            .iter()
            .any(|taken| taken.start < range.end && range.start < taken.end);
        if overlaps {
            continue;
        }
        if range
            .clone()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            handed_out.push(range);
            return base;
        }
    }
    panic!("no free port range");
}

pub fn serve(service: &str, port: u16, data_dir: &std::path::Path, registry: u16) -> Proc {
    let child = Command::new(BIN)
        .args(["serve", service, "--port", &port.to_string(), "--data-dir"])
        .arg(data_dir.join(service))
        .env(
            "BAZAAR_REGISTRY_URL",
            format!("http://127.0.0.1:{registry}"),
        )
        .env("BAZAAR_HEARTBEAT_INTERVAL_MS", "200")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn bazaar serve");
    Proc(child)
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn ready(port: u16) -> bool {
    http()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

pub fn routable_catalogs(registry: u16) -> usize {
    http()
        .get(format!(
            "http://127.0.0.1:{registry}/api/v1/services/catalog"
        ))
        .send()
        .and_then(|r| r.json::<Vec<serde_json::Value>>())
        .map(|list| list.iter().filter(|i| i["status"] == "up").count())
        .unwrap_or(0)
}

/// Runs `bazaar up`, returning the process and a channel of its output lines.
pub fn up(data_dir: &std::path::Path, gateway: u16, base: u16) -> (Proc, mpsc::Receiver<String>) {
    up_with(data_dir, gateway, base, &[])
}

/// Runs `bazaar up` with extra `BAZAAR_...` settings in its (and its children's) environment.
pub fn up_with(
    data_dir: &std::path::Path,
    gateway: u16,
    base: u16,
    env: &[(&str, &str)],
) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--port",
            &gateway.to_string(),
            "--base-port",
            &base.to_string(),
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn bazaar up");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Proc(child), rx)
}

pub fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!(
                "no line containing {needle:?}; output so far:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// Runs the CLI with no stored sign-in (an empty config directory of its own), so the machine's
/// own `bazaar login` never leaks into a test.
pub fn cli(args: &[&str]) -> (bool, String) {
    let config_dir =
        std::env::temp_dir().join(format!("bazaar-test-config-{}", std::process::id()));
    let output = Command::new(BIN)
        .args(args)
        .env("BAZAAR_CONFIG_DIR", &config_dir)
        .output()
        .expect("run bazaar");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

pub fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The confidential test client the identity service seeds, and its registered redirect URI.
pub const TEST_RP: (&str, &str, &str) = (
    "test-rp",
    "test-rp-secret",
    "http://127.0.0.1:8799/callback",
);
pub const DEMO_ADMIN: (&str, &str) = ("admin@bazaar.test", "admin-pass-1");
pub const DEMO_CUSTOMER: (&str, &str) = ("shopper@bazaar.test", "shopper-pass-1");

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let verifier: String = (0..64)
        .map(|i| {
            let n = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .subsec_nanos() as usize
                + i * 7919)
                % 62;
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"[n] as char
        })
        .collect();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location.to_owned()
    }
}

pub fn form_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(&marker)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .replace("&amp;", "&")
}

/// Signs in through the login form like a browser and returns the authorization code sent to
/// `redirect_uri`, following `authorize_url` (which carries the client's PKCE challenge).
pub fn authorization_code(base: &str, authorize_url: &str, email: &str, password: &str) -> String {
    let browser = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut response = browser.get(authorize_url).send().expect("authorize");
    for _ in 0..6 {
        assert!(
            response.status().is_redirection(),
            "expected a redirect, got {}",
            response.status()
        );
        let location = absolute(
            base,
            response.headers()["location"]
                .to_str()
                .expect("ascii location"),
        );
        if !location.starts_with(base) {
            let code = location
                .split("code=")
                .nth(1)
                .and_then(|rest| rest.split('&').next())
                .unwrap_or_else(|| panic!("no code in {location}"));
            return code.to_owned();
        }
        if location.contains("/login") {
            let page = browser
                .get(&location)
                .send()
                .expect("login page")
                .text()
                .expect("html");
            let form = [
                ("csrf", form_value(&page, "csrf")),
                ("return_to", form_value(&page, "return_to")),
                ("email", email.to_owned()),
                ("password", password.to_owned()),
            ];
            response = browser
                .post(format!("{base}/login"))
                .form(&form)
                .send()
                .expect("login");
        } else {
            response = browser.get(&location).send().expect("follow");
        }
    }
    panic!("too many redirects");
}

/// An access token for a user, by the authorization code flow with PKCE through the login form.
pub fn user_token(base: &str, email: &str, password: &str) -> String {
    let (verifier, challenge) = pkce();
    let (client_id, secret, redirect_uri) = TEST_RP;
    let authorize = format!(
        "{base}/oauth2/authorize?response_type=code&client_id={client_id}&redirect_uri={}&scope=openid&state=st&code_challenge={challenge}&code_challenge_method=S256",
        redirect_uri.replace(':', "%3A").replace('/', "%2F")
    );
    let code = authorization_code(base, &authorize, email, password);
    let token: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{base}/oauth2/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .expect("token")
        .json()
        .expect("token json");
    token["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {token}"))
        .to_owned()
}

/// Environment variable selecting the profile the shop's system tests run on: `embedded` (the
/// default: SQLite per service, the embedded feed) or `scale-out` (a PostgreSQL database per
/// service and NATS JetStream, on the servers `BAZAAR_TEST_POSTGRES_URL` and
/// `BAZAAR_TEST_NATS_URL` name).
pub const PROFILE_ENV: &str = "BAZAAR_TEST_PROFILE";

/// Every service that keeps a database, so has one of its own on PostgreSQL. `bazaar up` runs
/// the others (registry, currency, gateway) without one. [`Profile::assert_no_sqlite`] catches a
/// service missing here: it would have made a SQLite file in the data directory.
pub const SERVICES_WITH_DATABASE: [&str; 11] = [
    "catalog",
    "identity",
    "developer",
    "inventory",
    "cart",
    "payments",
    "processor",
    "shipping",
    "orders",
    "notifications",
    "web",
];

/// What one system of a test runs on: nothing to add on the embedded profile; on scale-out, its
/// own databases and stream (removed again when this is dropped: keep it until the system is
/// stopped).
pub struct Profile {
    scale_out: Option<ScaleOut>,
}

impl Profile {
    /// The profile [`PROFILE_ENV`] selects. Panics when it names no profile, or selects
    /// scale-out without its servers: a scale-out run that quietly used SQLite would be a lie.
    pub fn selected() -> Self {
        if !scale_out_selected() {
            return Self { scale_out: None };
        }
        let nats = std::env::var(bazaar_messaging::testing::NATS_ENV)
            .ok()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "{PROFILE_ENV}=scale-out needs {} (e.g. nats://127.0.0.1:4222)",
                    bazaar_messaging::testing::NATS_ENV
                )
            });
        Self::scale_out_on(&nats)
    }

    /// The scale-out profile, whatever [`PROFILE_ENV`] says, with events on the NATS server at
    /// `nats_url` (a test's private server). Panics when no PostgreSQL server is configured.
    pub fn scale_out_on(nats_url: &str) -> Self {
        Self {
            scale_out: Some(ScaleOut::create(nats_url)),
        }
    }

    /// The scale-out profile when both of its servers are configured, whatever [`PROFILE_ENV`]
    /// says; `None` otherwise.
    pub fn scale_out_if_configured() -> Option<Self> {
        let postgres = std::env::var(bazaar_kit::storage::testing::POSTGRES_ENV).ok();
        let nats = std::env::var(bazaar_messaging::testing::NATS_ENV).ok();
        match (postgres, nats) {
            (Some(p), Some(n)) if !p.is_empty() && !n.is_empty() => Some(Self::scale_out_on(&n)),
            _ => None,
        }
    }

    /// The profile's settings followed by `extra`, for `bazaar up` or `bazaar serve` (a later
    /// setting of the same name wins).
    pub fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env: Vec<(&str, &str)> = self
            .scale_out
            .iter()
            .flat_map(|s| s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        env.extend_from_slice(extra);
        env
    }

    /// On scale-out, panics if a service made a SQLite database under `data_dir` (it was left
    /// out of [`SERVICES_WITH_DATABASE`]); nothing on the embedded profile.
    pub fn assert_no_sqlite(&self, data_dir: &std::path::Path) {
        if self.scale_out.is_some() {
            let files = sqlite_files(data_dir);
            assert!(
                files.is_empty(),
                "on the scale-out profile every database is on PostgreSQL, yet SQLite files were \
                 made (add the service to SERVICES_WITH_DATABASE): {files:?}"
            );
        }
    }

    /// Says on the test's output which profile a system runs on.
    pub fn describe(&self) -> String {
        match &self.scale_out {
            None => "embedded profile (SQLite, embedded feed)".to_owned(),
            Some(s) => format!(
                "scale-out profile (PostgreSQL, NATS JetStream at {}, stream {})",
                s.nats_url, s.stream
            ),
        }
    }
}

/// Whether [`PROFILE_ENV`] selects the scale-out profile; panics on a value naming neither.
pub fn scale_out_selected() -> bool {
    match std::env::var(PROFILE_ENV).as_deref() {
        Err(_) | Ok("") | Ok("embedded") => false,
        Ok("scale-out") => true,
        Ok(other) => panic!("{PROFILE_ENV}={other:?}: expected `embedded` or `scale-out`"),
    }
}

/// Held by the one scale-out system a test process runs at a time. Each service's pool may
/// open up to 10 PostgreSQL connections (kit's storage), so a system of 11 services with a
/// database may hold 110, and under the oversell race or the chaos run one system was measured
/// at 85 to 89, against the server's default `max_connections` of 100: two systems at once (the
/// test harness runs a file's tests in parallel threads) made services fail to start with "pool
/// timed out". Taking turns keeps the services' real pool sizes, which is what the profile is
/// meant to prove, and costs little on a machine whose cores the parallel systems share anyway.
static ONE_SCALE_OUT_SYSTEM_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The scale-out resources of one system: a fresh PostgreSQL database per service with one, and a
/// JetStream stream of its own.
struct ScaleOut {
    env: Vec<(String, String)>,
    nats_url: String,
    stream: String,
    databases: Vec<String>,
    /// Released last, after the databases were dropped (which also ends any connection a
    /// stopping service still held), so the next system starts with the server to itself.
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl ScaleOut {
    fn create(nats_url: &str) -> Self {
        // A test that failed while holding its turn poisoned the lock; the turn is still free.
        let turn = ONE_SCALE_OUT_SYSTEM_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let postgres = bazaar_kit::storage::testing::POSTGRES_ENV;
        if std::env::var(postgres).map_or(true, |url| url.is_empty()) {
            panic!("the scale-out profile needs {postgres} (e.g. postgres://postgres@127.0.0.1:5432/postgres)");
        }
        let stream = bazaar_messaging::testing::stream_name();
        let mut env = vec![
            ("BAZAAR_EVENT_TRANSPORT".to_owned(), "nats".to_owned()),
            ("BAZAAR_NATS_URL".to_owned(), nats_url.to_owned()),
            ("BAZAAR_NATS_STREAM".to_owned(), stream.clone()),
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut databases = Vec::new();
        for service in SERVICES_WITH_DATABASE {
            let url = runtime
                .block_on(bazaar_kit::storage::testing::fresh_postgres_database(
                    service,
                ))
                .expect("checked above that the PostgreSQL server is configured");
            databases.push(url.rsplit('/').next().expect("database name").to_owned());
            env.push((
                format!("BAZAAR_{}__DATABASE_URL", service.to_uppercase()),
                url,
            ));
        }
        Self {
            env,
            nats_url: nats_url.to_owned(),
            stream,
            databases,
            _turn: turn,
        }
    }
}

impl Drop for ScaleOut {
    /// Best effort: the machine's NATS and PostgreSQL are shared with other runs, so a test
    /// cleans up after itself, but a failure to do so fails nothing.
    fn drop(&mut self) {
        if let Err(error) = delete_nats_stream(&self.nats_url, &self.stream) {
            eprintln!("could not delete the test stream {}: {error}", self.stream);
        }
        let Ok(admin_url) = std::env::var(bazaar_kit::storage::testing::POSTGRES_ENV) else {
            return;
        };
        let databases = std::mem::take(&mut self.databases);
        let dropped = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|runtime| {
                runtime.block_on(async {
                    use sqlx::Executor;
                    sqlx::any::install_default_drivers();
                    let admin = sqlx::any::AnyPoolOptions::new()
                        .max_connections(1)
                        .connect(&admin_url)
                        .await
                        .map_err(|e| e.to_string())?;
                    for name in databases {
                        // FORCE: a killed service's connections may not be gone yet.
                        admin
                            .execute(
                                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                            )
                            .await
                            .map_err(|e| format!("{name}: {e}"))?;
                    }
                    admin.close().await;
                    Ok(())
                })
            });
        if let Err(error) = dropped {
            eprintln!("could not drop the test databases: {error}");
        }
    }
}

/// Every `*.db` file under `dir`.
fn sqlite_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(sqlite_files(&path));
        } else if path.extension().is_some_and(|e| e == "db") {
            found.push(path);
        }
    }
    found
}

/// Deletes a JetStream stream with a request on the NATS protocol itself (a few text lines over
/// TCP), which keeps a NATS client library out of these tests.
pub fn delete_nats_stream(url: &str, stream: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let address = url
        .trim_start_matches("nats://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let address = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))?;
    let socket = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut writer = socket.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("INFO") {
        return Err(format!("not a NATS server: {line}"));
    }
    // The reply subject is this stream's own: a concurrent cleanup never reads this answer.
    write!(
        writer,
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"bazaar-test-cleanup\"}}\r\n\
         SUB _INBOX.bazaar_test_cleanup.{stream} 1\r\n\
         PUB $JS.API.STREAM.DELETE.{stream} _INBOX.bazaar_test_cleanup.{stream} 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("the server closed the connection".into());
        }
        if line.starts_with("PING") {
            writer.write_all(b"PONG\r\n").map_err(|e| e.to_string())?;
        } else if line.starts_with("-ERR") {
            return Err(line.trim().to_owned());
        } else if line.starts_with("MSG") {
            // MSG <subject> <sid> <size>: the payload and its CRLF follow.
            let size: usize = line
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad MSG line {line}"))?;
            let mut payload = vec![0; size + 2];
            reader.read_exact(&mut payload).map_err(|e| e.to_string())?;
            let answer = String::from_utf8_lossy(&payload[..size]).into_owned();
            return if answer.contains("\"success\":true") {
                Ok(())
            } else {
                Err(answer)
            };
        }
    }
}
