//! The command line against a running system (`bazaar up --log-files` with the services the
//! commands need), each command run as its own `bazaar` process with `BAZAAR_CONFIG_DIR` in a
//! temporary directory: `login` through the browser flow (the login form driven with reqwest
//! up to the CLI's loopback callback), `whoami`, the cart with the stored sign-in and no
//! `--token`, a refresh when the access token is about to expire (the rotated refresh token
//! is stored), `keys create/list/usage/revoke`, `logs` (tail, follow, a missing file), and
//! `logout` (revoked at the provider, and the next command says to log in).

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const NOT_SIGNED_IN: &str = "not signed in: run `bazaar login`";

/// A system started with `--log-files`, and a config directory for the CLI's credentials.
struct System {
    base: String,
    data: tempfile::TempDir,
    config: tempfile::TempDir,
    _up: Proc,
}

impl System {
    fn start() -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let gateway = free_port();
        let base_port = free_port_range(24);
        let mut child = Command::new(BIN)
            .args([
                "up",
                "--log-files",
                // Only what these commands use, so the test does not depend on other services.
                "--only",
                "gateway,identity,catalog,cart,developer",
                "--port",
                &gateway.to_string(),
                "--base-port",
                &base_port.to_string(),
                "--data-dir",
            ])
            .arg(data.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bazaar up");
        let stdout = child.stdout.take().expect("stdout");
        let up = Proc(child);
        let rx = lines_of(stdout);
        wait_for_line(&rx, "bazaar is up", Duration::from_secs(90));
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Self {
            base: format!("http://127.0.0.1:{gateway}"),
            data,
            config: tempfile::tempdir().expect("tempdir"),
            _up: up,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["--gateway", &self.base])
            .args(args)
            .env("BAZAAR_CONFIG_DIR", self.config.path())
            // Nothing from the developer's own environment may sign these commands in.
            .env_remove("BAZAAR_TOKEN")
            .env_remove("BAZAAR_GATEWAY")
            .stdin(Stdio::null());
        command
    }

    /// Runs a command to its end: (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let output = self.command(args).output().expect("run bazaar");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs a command that must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.run(&all);
        assert!(ok, "bazaar {args:?} failed: {out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bazaar {args:?}: {e}: {out}"))
    }

    fn credentials_path(&self) -> PathBuf {
        self.config.path().join("credentials.json")
    }

    fn credentials(&self) -> Value {
        let text = std::fs::read_to_string(self.credentials_path()).expect("credentials file");
        let file: Value = serde_json::from_str(&text).expect("credentials json");
        file["gateways"][&self.base].clone()
    }
}

fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn form_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(&marker)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {name} field in {html}"))
        .replace("&amp;", "&")
}

/// Plays the browser: follows `authorize_url` through the login form with the customer's
/// credentials and on to the redirect target outside the gateway (the CLI's loopback
/// listener), whose answer is returned.
fn browser_sign_in(base: &str, authorize_url: &str) -> reqwest::blocking::Response {
    let browser = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut response = browser.get(authorize_url).send().expect("authorize");
    for _ in 0..8 {
        if !response.status().is_redirection() {
            return response;
        }
        let location = response.headers()["location"]
            .to_str()
            .expect("ascii location")
            .to_owned();
        let location = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        if location.starts_with(&format!("{base}/login")) {
            let page = browser
                .get(&location)
                .send()
                .expect("login page")
                .text()
                .expect("html");
            response = browser
                .post(format!("{base}/login"))
                .form(&[
                    ("csrf", form_value(&page, "csrf")),
                    ("return_to", form_value(&page, "return_to")),
                    ("email", DEMO_CUSTOMER.0.to_owned()),
                    ("password", DEMO_CUSTOMER.1.to_owned()),
                ])
                .send()
                .expect("login");
        } else {
            response = browser.get(&location).send().expect("follow");
        }
    }
    panic!("too many redirects");
}

fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the command did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `bazaar login` end to end; returns what it printed.
fn login(system: &System) -> Vec<String> {
    let mut child = system
        .command(&["login", "--port", "0", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn login");
    let stdout = lines_of(child.stdout.take().expect("stdout"));
    let stderr = lines_of(child.stderr.take().expect("stderr"));
    let printed = wait_for_line(&stdout, "/oauth2/authorize?", Duration::from_secs(10));
    let url = printed.last().expect("a line").trim().to_owned();
    assert!(
        url.starts_with(&format!("{}/oauth2/authorize?", system.base)),
        "{url}"
    );
    let query: HashMap<String, String> = reqwest::Url::parse(&url)
        .expect("url")
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(query["client_id"], "bazaar-cli");
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["response_type"], "code");
    assert!(query["scope"].contains("offline_access"), "{url}");
    let redirect_uri = query["redirect_uri"].clone();
    assert!(
        redirect_uri.starts_with("http://127.0.0.1:") && redirect_uri.ends_with("/callback"),
        "{redirect_uri}"
    );

    // A redirect with another state (a forged or stale one) is refused, and the login goes on.
    let forged = http()
        .get(format!("{redirect_uri}?code=forged&state=not-this-one"))
        .send()
        .expect("forged callback");
    assert_eq!(forged.status().as_u16(), 400);
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "login gave up"
    );

    let page = browser_sign_in(&system.base, &url);
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().expect("html");
    assert!(
        html.contains("Signed in") && html.contains("close this tab"),
        "{html}"
    );
    assert!(html.contains(DEMO_CUSTOMER.0), "{html}");

    let status = wait_exit(&mut child, Duration::from_secs(20));
    // The readers end at the pipes' end of file, right after the exit.
    let rest = |rx: mpsc::Receiver<String>| -> Vec<String> {
        std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(5)).ok()).collect()
    };
    let mut out: Vec<String> = printed;
    out.extend(rest(stdout));
    let err = rest(stderr);
    assert!(status.success(), "login failed: {out:?} {err:?}");
    assert!(
        err.iter().any(|l| l.contains("state does not match")),
        "the forged redirect was reported: {err:?}"
    );
    out
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn every_command_against_a_running_system() {
    let system = System::start();

    // Nobody is signed in yet: commands that need a user say what to do.
    let (ok, out, err) = system.run(&["cart", "show"]);
    assert!(!ok, "{out}");
    assert!(err.contains(NOT_SIGNED_IN), "{err}");
    let (ok, _, err) = system.run(&["whoami"]);
    assert!(!ok && err.contains(NOT_SIGNED_IN), "{err}");

    // A login nobody completes gives up after its timeout.
    let (ok, _, err) = system.run(&["login", "--timeout", "1s"]);
    assert!(!ok && err.contains("gave up"), "{err}");
    assert!(!system.credentials_path().exists());

    // --- login
    let printed = login(&system);
    assert!(
        printed
            .iter()
            .any(|l| l.contains("Signed in to") && l.contains(DEMO_CUSTOMER.0)),
        "{printed:?}"
    );
    #[cfg(unix)]
    assert_eq!(mode(&system.credentials_path()), 0o600);
    let stored = system.credentials();
    assert_eq!(stored["gateway"], system.base.as_str(), "{stored}");
    assert!(stored["refresh_token"].is_string(), "{stored}");
    assert_eq!(stored["user"]["email"], DEMO_CUSTOMER.0);

    // --- whoami
    let me = system.json(&["whoami"]);
    assert_eq!(me["email"], DEMO_CUSTOMER.0, "{me}");
    assert_eq!(me["gateway"], system.base.as_str());
    assert_eq!(me["source"], "credentials");
    assert!(
        me["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .any(|r| r == "customer"),
        "{me}"
    );
    assert_eq!(me["sub"], stored["user"]["sub"]);

    // --- the cart with the stored sign-in (no --token anywhere)
    let (ok, out, err) = system.run(&["cart", "add", "kitchen-espresso-cup-set", "2"]);
    assert!(ok, "{out}{err}");
    let cart = system.json(&["cart", "show"]);
    let lines = cart["lines"].as_array().expect("lines");
    assert!(
        lines
            .iter()
            .any(|l| l["product_id"] == "kitchen-espresso-cup-set" && l["quantity"] == 2),
        "{cart}"
    );

    // --- an access token about to expire is refreshed, and the rotated refresh token stored
    let before = system.credentials();
    let mut file: Value =
        serde_json::from_str(&std::fs::read_to_string(system.credentials_path()).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    file["gateways"][&system.base]["expires_at"] = Value::from(now - 60);
    std::fs::write(
        system.credentials_path(),
        serde_json::to_vec_pretty(&file).unwrap(),
    )
    .unwrap();
    let cart = system.json(&["cart", "show"]);
    assert_eq!(cart["lines"].as_array().map(Vec::len), Some(1), "{cart}");
    let after = system.credentials();
    assert_ne!(after["refresh_token"], before["refresh_token"], "rotated");
    assert_ne!(after["access_token"], before["access_token"]);
    assert!(after["expires_at"].as_i64().unwrap() > now + 60, "{after}");
    #[cfg(unix)]
    assert_eq!(mode(&system.credentials_path()), 0o600);
    // The old refresh token is spent: the provider refuses it.
    let spent = http()
        .post(format!("{}/oauth2/token", system.base))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", before["refresh_token"].as_str().unwrap()),
            ("client_id", "bazaar-cli"),
        ])
        .send()
        .expect("token");
    assert_eq!(spent.status().as_u16(), 400);

    // --- keys
    let created = system.json(&["keys", "create", "--name", "cli test", "--plan", "standard"]);
    let key = created["key"]
        .as_str()
        .expect("the key, shown once")
        .to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with("bzr_"), "{created}");
    assert_eq!(created["plan"], "standard");
    let (ok, out, err) = system.run(&["keys", "create", "--name", "plain"]);
    assert!(ok, "{err}");
    assert!(out.contains("bzr_") && out.contains("only time"), "{out}");
    // The key works at the gateway (a made-up one does not).
    let with_key = |k: &str| {
        http()
            .get(format!("{}/api/v1/products?per_page=1", system.base))
            .header("x-api-key", k)
            .send()
            .expect("request")
            .status()
            .as_u16()
    };
    assert_eq!(with_key(&key), 200);
    assert_eq!(
        with_key("bzr_AAAAAAAAAAAA_notarealkeynotarealkeynotarealk"),
        401
    );
    let list = system.json(&["keys", "list"]);
    let items = list["items"].as_array().expect("items");
    let listed = items
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("listed");
    assert_eq!(listed["status"], "active");
    assert!(
        listed.get("key").is_none(),
        "secrets are never listed: {listed}"
    );
    assert!(!list.to_string().contains(&key), "the key is shown once");
    let usage = system.json(&["keys", "usage"]);
    assert!(
        usage["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|u| u["key_id"] == id.as_str()),
        "{usage}"
    );
    let (ok, out, err) = system.run(&["keys", "list"]);
    assert!(
        ok && out.contains(&id) && out.contains("cli test"),
        "{out}{err}"
    );
    let revoked = system.json(&["keys", "revoke", &id]);
    assert_eq!(revoked["status"], "revoked");
    let list = system.json(&["keys", "list"]);
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .cloned()
        .expect("still listed");
    assert_eq!(listed["status"], "revoked");
    let plans = system.json(&["keys", "plans"]);
    assert!(plans["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "free-trial"));

    // --- logs
    let data_dir = system.data.path().to_str().expect("utf-8 path").to_owned();
    let log_path = system.data.path().join("logs").join("identity.log");
    let written = std::fs::read_to_string(&log_path).expect("identity.log");
    assert!(!written.is_empty(), "identity logged something at info");
    let (ok, out, err) = system.run(&["logs", "identity", "--data-dir", &data_dir, "--lines", "3"]);
    assert!(ok, "{err}");
    let shown: Vec<&str> = out.lines().collect();
    assert!(!shown.is_empty() && shown.len() <= 3, "{out}");
    for line in &shown {
        assert!(written.contains(line), "{line} is from the file");
    }
    let (ok, _, err) = system.run(&["logs", "nosuch", "--data-dir", &data_dir]);
    assert!(!ok, "a missing log fails");
    assert!(
        err.contains(
            &system
                .data
                .path()
                .join("logs")
                .join("nosuch.log")
                .display()
                .to_string()
        ),
        "the error names the file: {err}"
    );
    let (ok, _, err) = system.run(&["logs", "../identity", "--data-dir", &data_dir]);
    assert!(!ok && err.contains("not a service name"), "{err}");
    // --follow prints what is appended after it started.
    let follow_log = system.data.path().join("logs").join("follow-test.log");
    std::fs::write(&follow_log, "old line\n").unwrap();
    let mut follower = Proc(
        system
            .command(&["logs", "follow-test", "--data-dir", &data_dir, "--follow"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn logs --follow"),
    );
    let followed = lines_of(follower.0.stdout.take().expect("stdout"));
    wait_for_line(&followed, "old line", Duration::from_secs(10));
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&follow_log)
            .unwrap();
        writeln!(file, "appended while following").unwrap();
    }
    wait_for_line(
        &followed,
        "appended while following",
        Duration::from_secs(10),
    );
    follower.kill9();

    // --- logout: revoked at the provider, forgotten here, and the next command says so.
    let refresh = system.credentials()["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let (ok, out, err) = system.run(&["logout"]);
    assert!(ok && out.contains("signed out"), "{out}{err}");
    let (ok, _, err) = system.run(&["cart", "show"]);
    assert!(!ok);
    assert!(err.contains(NOT_SIGNED_IN), "{err}");
    let (ok, _, err) = system.run(&["keys", "list"]);
    assert!(!ok && err.contains(NOT_SIGNED_IN), "{err}");
    assert!(system.credentials().is_null(), "the entry is gone");
    let refused = http()
        .post(format!("{}/oauth2/token", system.base))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", "bazaar-cli"),
        ])
        .send()
        .expect("token");
    assert_eq!(
        refused.status().as_u16(),
        400,
        "the refresh token was revoked"
    );
    // Logging out again is harmless.
    let (ok, out, _) = system.run(&["logout"]);
    assert!(ok && out.contains("not signed in"), "{out}");
}
