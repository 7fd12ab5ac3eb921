//! Helpers shared by the tests that run real bazaar processes.
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
pub fn free_port_range(count: u16) -> u16 {
    for _ in 0..200 {
        let base = 10_000 + fastrand_port() % 22_000;
        let all_free =
            (base..base + count).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port range");
}

pub fn fastrand_port() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos()
        % 30_000) as u16
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
