//! The web service's pages through the gateway, with a cookie-keeping HTTP client standing in
//! for a browser (the browser tests in tests/browser do the same with Chromium; these run with
//! `cargo test` anywhere): sign-in through the identity provider, cart merge, checkout,
//! double-submit idempotency, who may see an order, sign-out, and the protections (cookie
//! flags, tokens never in the browser, cross-site POSTs refused, single-use sign-in state, bad
//! form input answered with a page).

mod support;

use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use support::*;

struct Site {
    base: String,
    _proc: Proc,
    _data: tempfile::TempDir,
}

impl Site {
    fn start() -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let gateway = free_port();
        let base_port = free_port_range(16);
        let (proc, rx) = up_with(data.path(), gateway, base_port, &[]);
        wait_for_line(&rx, "bazaar is up", Duration::from_secs(90));
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Self {
            base: format!("http://127.0.0.1:{gateway}"),
            _proc: proc,
            _data: data,
        }
    }

    /// A new "browser": keeps cookies, does not follow redirects (each hop is checked).
    fn browser(&self) -> Client {
        Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_store(true)
            .timeout(Duration::from_secs(15))
            .build()
            .expect("client")
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn get(&self, browser: &Client, path: &str) -> Response {
        browser.get(self.url(path)).send().expect("get")
    }

    /// A same-origin form POST, as a browser sends it.
    fn post(&self, browser: &Client, path: &str, form: &[(&str, &str)]) -> Response {
        browser
            .post(self.url(path))
            .header("origin", &self.base)
            .form(form)
            .send()
            .expect("post")
    }

    /// Signs `browser` in as `email` through `/signin`, identity's login form and the callback;
    /// returns where it landed and the callback URL (for a replay).
    fn sign_in(
        &self,
        browser: &Client,
        return_to: &str,
        email: &str,
        password: &str,
    ) -> (String, String) {
        let mut response = self.get(browser, &format!("/signin?return_to={return_to}"));
        for _ in 0..8 {
            assert!(
                response.status().is_redirection(),
                "sign-in hop answered {}",
                response.status()
            );
            let next = location(&response);
            if next.contains("/login?") {
                let page = self.get(browser, &next).text().expect("login page");
                response = self.post(
                    browser,
                    "/login",
                    &[
                        ("csrf", &form_value(&page, "csrf")),
                        ("return_to", &form_value(&page, "return_to")),
                        ("email", email),
                        ("password", password),
                    ],
                );
                continue;
            }
            if next.contains("/auth/callback") {
                let landed = self.get(browser, &next);
                assert_eq!(landed.status(), 303, "the callback signs in and redirects");
                return (location(&landed), next);
            }
            response = self.get(browser, &next);
        }
        panic!("sign-in did not finish");
    }
}

fn location(response: &Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn set_cookies(response: &Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

/// The first catalog product with stock, by id and name (through the public API).
fn a_product(site: &Site) -> (String, String) {
    let page: serde_json::Value =
        reqwest::blocking::get(site.url("/api/v1/products?per_page=1&sort=name"))
            .expect("products")
            .json()
            .expect("json");
    let product = &page["items"][0];
    (
        product["id"].as_str().expect("id").to_owned(),
        product["name"].as_str().expect("name").to_owned(),
    )
}

fn wait_for_page(site: &Site, browser: &Client, path: &str, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let page = site.get(browser, path).text().expect("page");
        if page.contains(wanted) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never showed {wanted:?}:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn checkout_form<'a>(key: &'a str, card: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("idempotency_key", key),
        ("name", "Web Test"),
        ("line1", "1 Main Street"),
        ("city", "New York"),
        ("country", "US"),
        ("postal_code", "10001"),
        ("card_number", card),
        ("expiry", "12/30"),
        ("cvc", "123"),
    ]
}

#[test]
fn a_visitor_shops_signed_out_signs_in_checks_out_once_and_signs_out() {
    let site = Site::start();
    let browser = site.browser();
    let (product_id, product_name) = a_product(&site);

    // The first visit gets an anonymous cart cookie: HttpOnly, SameSite=Lax.
    let home = site.get(&browser, "/");
    assert_eq!(home.status(), 200);
    let cookies = set_cookies(&home);
    let cart_cookie = cookies
        .iter()
        .find(|c| c.starts_with("bazaar_cart="))
        .unwrap_or_else(|| panic!("a cart cookie: {cookies:?}"));
    assert!(
        cart_cookie.contains("HttpOnly") && cart_cookie.contains("SameSite=Lax"),
        "{cart_cookie}"
    );
    assert!(home.text().expect("html").contains("Featured"));

    // Add to the anonymous cart; a cross-site POST is refused and changes nothing.
    let added = site.post(
        &browser,
        "/cart/add",
        &[("product_id", &product_id), ("quantity", "2")],
    );
    assert_eq!(added.status(), 303);
    assert_eq!(location(&added), "/cart");
    let forged = browser
        .post(site.url("/cart/add"))
        .header("origin", "http://evil.example")
        .form(&[("product_id", product_id.as_str()), ("quantity", "5")])
        .send()
        .expect("forged post");
    assert_eq!(forged.status(), 403);
    let cart = site.get(&browser, "/cart").text().expect("cart");
    assert!(cart.contains(&product_name), "{cart}");
    assert!(
        cart.contains("data-testid=\"cart-count\">2<"),
        "two, not seven: {cart}"
    );

    // Bad form input is a page naming the problem, not a crash.
    let bad = site.post(
        &browser,
        "/cart/add",
        &[("product_id", &product_id), ("quantity", "lots")],
    );
    assert_eq!(bad.status(), 400);
    let page = bad.text().expect("html");
    assert!(
        page.contains("not filled in correctly") && page.contains("quantity"),
        "{page}"
    );
    // A query string that does not parse is answered the same way.
    let bad = site.get(&browser, "/search?q=mug&page=second");
    assert_eq!(bad.status(), 400);
    let page = bad.text().expect("html");
    assert!(
        page.contains("not filled in correctly") && page.contains("page"),
        "{page}"
    );

    // Sign in: back where the visitor was going, with a session cookie and no token in sight.
    let (landed, callback) = site.sign_in(&browser, "/checkout", DEMO_CUSTOMER.0, DEMO_CUSTOMER.1);
    assert_eq!(landed, "/checkout");
    assert!(
        !callback.is_empty(),
        "the identity provider redirected to the callback"
    );

    // The sign-in state is single use: replaying the callback is refused.
    let replay = site.get(&site.browser(), &callback);
    assert_eq!(replay.status(), 400);
    assert!(replay
        .text()
        .expect("html")
        .contains("expired or was already used"));

    // The anonymous cart was merged into the customer's.
    let checkout = site.get(&browser, "/checkout").text().expect("checkout");
    assert!(
        checkout.contains(&format!("2 × {product_name}")),
        "{checkout}"
    );
    assert!(
        checkout.contains("Signed in as <strong>shopper@bazaar.test"),
        "{checkout}"
    );
    assert!(!checkout.contains("eyJ"), "no token in the page");
    let key = form_value(&checkout, "idempotency_key");

    // Place the order, then submit the same form again (a double click): one order.
    let placed = site.post(
        &browser,
        "/checkout",
        &checkout_form(&key, "4242424242424242"),
    );
    assert_eq!(
        placed.status(),
        303,
        "{}",
        placed.text().unwrap_or_default()
    );
    let order_path = location(&placed);
    assert!(order_path.starts_with("/orders/"), "{order_path}");
    let again = site.post(
        &browser,
        "/checkout",
        &checkout_form(&key, "4242424242424242"),
    );
    assert_eq!(
        location(&again),
        order_path,
        "the same key is the same order"
    );

    let order = wait_for_page(&site, &browser, &order_path, "Confirmed. Thank you");
    assert!(order.contains(&product_name));
    let orders = site.get(&browser, "/orders").text().expect("orders");
    assert_eq!(
        orders.matches("href=\"/orders/").count(),
        1,
        "one order: {orders}"
    );
    wait_for_page(&site, &browser, "/account/mailbox", "is confirmed");

    // Another customer cannot see it.
    let other = site.browser();
    let email = format!("web-test-{}@example.test", std::process::id());
    let registered = site.post(
        &other,
        "/account/register",
        &[
            ("name", "Other Customer"),
            ("email", &email),
            ("password", "other-pass-12"),
        ],
    );
    assert_eq!(
        registered.status(),
        303,
        "{}",
        registered.text().unwrap_or_default()
    );
    site.sign_in(&other, "/", &email, "other-pass-12");
    let denied = site.get(&other, &order_path);
    assert!(
        matches!(denied.status().as_u16(), 403 | 404),
        "another customer's order is not shown: {}",
        denied.status()
    );

    // Signing out ends the web session and hands over to identity's logout.
    let out = site.post(&browser, "/signout", &[("return_to", "/")]);
    assert_eq!(out.status(), 307);
    assert_eq!(location(&out), "/logout");
    assert!(set_cookies(&out)
        .iter()
        .any(|c| c.starts_with("bazaar_web_session=;") || c.contains("Max-Age=0")));
    let after = site.get(&browser, "/orders");
    assert_eq!(after.status(), 303);
    assert!(
        location(&after).starts_with("/signin"),
        "signed out: {}",
        location(&after)
    );
}

#[test]
fn a_refused_checkout_names_the_field_on_the_form() {
    let site = Site::start();
    let browser = site.browser();
    let (product_id, _) = a_product(&site);
    site.sign_in(&browser, "/", DEMO_CUSTOMER.0, DEMO_CUSTOMER.1);
    site.post(
        &browser,
        "/cart/add",
        &[("product_id", &product_id), ("quantity", "1")],
    );
    let key = uuid_like();

    // A card number failing the Luhn check: payments names `number`, the form `card_number`.
    let refused = site.post(
        &browser,
        "/checkout",
        &checkout_form(&key, "4242424242424241"),
    );
    assert_eq!(refused.status(), 422);
    let page = refused.text().expect("html");
    assert!(page.contains("id=\"card_number-error\""), "{page}");

    // An expiry that is not MM/YY.
    let mut form = checkout_form(&key, "4242424242424242");
    form.retain(|(name, _)| *name != "expiry");
    form.push(("expiry", "sometime"));
    let refused = site.post(&browser, "/checkout", &form);
    assert_eq!(refused.status(), 422);
    assert!(refused
        .text()
        .expect("html")
        .contains("id=\"expiry-error\""));
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let hex = format!("{nanos:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}
