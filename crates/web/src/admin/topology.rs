//! The console's overview: every service and instance the registry knows, with its health, and
//! a server-rendered SVG picture of who calls whom and who consumes whose events.
//!
//! Services do not advertise their dependencies, so [`EDGES`] declares them, read from the code:
//! the gateway's default routes (crates/gateway/src/config.rs), each service's `ServiceClient`
//! calls (orders' `remote.rs`, shipping's `upstream.rs`, cart's `catalog.rs`, payments'
//! processor client, the web's pages), and the event subscriptions (cart and notifications,
//! docs/shop.md "Consumers"). A new dependency is one line here.
//!
//! Not drawn, because every service has them: registering and heartbeating with the registry
//! (and watching it), and fetching the identity service's signing keys and service tokens.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::response::Response;
use bazaar_discovery::{Instance, InstanceStatus};
use bazaar_kit::storage::now_ms;
use serde::Serialize;

use super::metrics::ScrapeHealth;
use super::Admin;
use crate::pages::render;
use crate::AppState;

/// A service the shop runs, and what it is for.
pub struct Known {
    pub name: &'static str,
    pub what: &'static str,
}

/// Every service `bazaar up` runs, in the order the picture lays them out.
pub const SERVICES: &[Known] = &[
    Known {
        name: "gateway",
        what: "the single entry point: routes by path, balances, serves static files",
    },
    Known {
        name: "web",
        what: "the pages: storefront, admin console, developer portal",
    },
    Known {
        name: "registry",
        what: "service registry: who runs where",
    },
    Known {
        name: "identity",
        what: "OAuth 2.0 / OpenID Connect provider, users, signing keys",
    },
    Known {
        name: "developer",
        what: "API keys, plans and usage",
    },
    Known {
        name: "orders",
        what: "checkout and the saga that drives it",
    },
    Known {
        name: "notifications",
        what: "writes emails into a mailbox from events",
    },
    Known {
        name: "cart",
        what: "carts per user and per anonymous session",
    },
    Known {
        name: "currency",
        what: "exchange rates, exact conversion",
    },
    Known {
        name: "payments",
        what: "cards and payments, intermediary to the processor",
    },
    Known {
        name: "shipping",
        what: "quotes, shipments, tracking",
    },
    Known {
        name: "catalog",
        what: "products and categories",
    },
    Known {
        name: "inventory",
        what: "stock per warehouse, reservations",
    },
    Known {
        name: "processor",
        what: "the card-processor simulator (an outside system)",
    },
];

/// How one service depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// `from` calls `to` synchronously (HTTP).
    Calls,
    /// `to` consumes events `from` publishes.
    Events,
}

/// One declared dependency.
pub struct Edge {
    pub from: &'static str,
    pub to: &'static str,
    pub link: Link,
    /// What goes along it.
    pub what: &'static str,
}

const fn calls(from: &'static str, to: &'static str, what: &'static str) -> Edge {
    Edge {
        from,
        to,
        link: Link::Calls,
        what,
    }
}

const fn events(from: &'static str, to: &'static str, what: &'static str) -> Edge {
    Edge {
        from,
        to,
        link: Link::Events,
        what,
    }
}

/// Who calls whom, and who consumes whose events.
pub const EDGES: &[Edge] = &[
    // The gateway's default routes, plus its API-key lookups and usage reports.
    calls("gateway", "web", "the pages (/)"),
    calls("gateway", "catalog", "products, categories, feeds"),
    calls("gateway", "identity", "OAuth, login, users"),
    calls("gateway", "registry", "/api/v1/registry (admins)"),
    calls(
        "gateway",
        "developer",
        "developer API; API-key lookups and usage reports",
    ),
    calls("gateway", "inventory", "stock, warehouses, adjustments"),
    calls("gateway", "cart", "the cart"),
    calls("gateway", "currency", "currencies, conversion"),
    calls("gateway", "payments", "cards, payments"),
    calls("gateway", "shipping", "quotes, shipments"),
    calls("gateway", "orders", "orders"),
    calls("gateway", "notifications", "mailbox"),
    // The web's pages, with the signed-in user's token.
    calls("web", "identity", "sign-in tokens, registration, users"),
    calls("web", "catalog", "products, categories, admin writes"),
    calls("web", "inventory", "stock, adjustments"),
    calls("web", "cart", "the cart"),
    calls("web", "currency", "prices in the visitor's currency"),
    calls("web", "payments", "cards, test cards, payments"),
    calls("web", "shipping", "estimates, tracking"),
    calls("web", "orders", "checkout, order status"),
    calls("web", "notifications", "the mailbox"),
    calls("web", "developer", "the developer portal"),
    // The checkout saga (crates/orders/src/remote.rs).
    calls("orders", "cart", "the user's cart at checkout"),
    calls(
        "orders",
        "shipping",
        "locate the address, quote, create the shipment",
    ),
    calls("orders", "inventory", "reserve, commit, release stock"),
    calls("orders", "currency", "convert the total"),
    calls("orders", "payments", "authorize, capture, void"),
    calls("cart", "catalog", "product names and prices"),
    calls("shipping", "inventory", "where the stock is"),
    calls("shipping", "catalog", "product weights"),
    calls(
        "payments",
        "processor",
        "vault cards, authorize, capture, void, refund",
    ),
    // Event consumers (docs/shop.md "Consumers").
    events("orders", "cart", "order.confirmed"),
    events("orders", "notifications", "order.*"),
    events(
        "payments",
        "notifications",
        "payment.captured, payment.refunded",
    ),
    events("shipping", "notifications", "shipment.*"),
];

/// The description of `name`, when it is a known service.
pub fn known(name: &str) -> Option<&'static Known> {
    SERVICES.iter().find(|k| k.name == name)
}

/// One instance as the overview shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceRow {
    pub id: String,
    pub service: String,
    pub address: String,
    pub version: String,
    /// What the instance last told the registry: `up`, `not_ready` or `draining`.
    pub status: &'static str,
    pub pid: Option<String>,
    /// How long ago it registered (`42 s`, `5 min`, `3 h`). The cached registry view is
    /// refreshed on changes only, so heartbeat times in it would be stale.
    pub registered_ago: String,
    pub scrape: ScrapeHealth,
    /// Up in the registry, and its metrics answered (or were not asked yet).
    pub healthy: bool,
}

/// One service's health.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    pub name: String,
    pub what: String,
    /// `up` (every instance healthy), `degraded` (some), `down` (none), `none` (no instance).
    pub health: &'static str,
    pub healthy: usize,
    pub instances: Vec<InstanceRow>,
    /// Distinct versions its instances run.
    pub versions: Vec<String>,
}

fn status_word(status: InstanceStatus) -> &'static str {
    match status {
        InstanceStatus::Up => "up",
        InstanceStatus::NotReady => "not_ready",
        InstanceStatus::Draining => "draining",
    }
}

/// Seconds as a short age for people.
fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

fn instance_row(state: &AppState, instance: &Instance, now: u64) -> InstanceRow {
    let scrape = state.metrics.health(&instance.id);
    InstanceRow {
        id: instance.id.clone(),
        service: instance.service.clone(),
        address: instance.address.clone(),
        version: instance.version.clone(),
        status: status_word(instance.status),
        pid: instance.metadata.get("pid").cloned(),
        registered_ago: ago(now.saturating_sub(instance.registered_at_ms) / 1000),
        healthy: instance.status == InstanceStatus::Up && scrape.state != "failed",
        scrape,
    }
}

/// Every known service (and any other the registry lists), with its instances and health.
pub fn services_health(state: &AppState) -> Vec<ServiceHealth> {
    let snapshot = state.backend.discovery().snapshot();
    let now = u64::try_from(now_ms()).unwrap_or(0);
    let mut names: Vec<String> = SERVICES.iter().map(|k| k.name.to_owned()).collect();
    for name in snapshot.services.keys() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
        .into_iter()
        .map(|name| {
            let instances: Vec<InstanceRow> = snapshot
                .services
                .get(&name)
                .into_iter()
                .flatten()
                .map(|i| instance_row(state, i, now))
                .collect();
            let healthy = instances.iter().filter(|i| i.healthy).count();
            let health = match (instances.len(), healthy) {
                (0, _) => "none",
                (n, h) if h == n => "up",
                (_, 0) => "down",
                _ => "degraded",
            };
            let mut versions: Vec<String> = instances.iter().map(|i| i.version.clone()).collect();
            versions.sort();
            versions.dedup();
            ServiceHealth {
                what: known(&name).map(|k| k.what).unwrap_or("").to_owned(),
                name,
                health,
                healthy,
                instances,
                versions,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The picture

const NODE_W: f64 = 128.0;
const NODE_H: f64 = 46.0;
const GAP_X: f64 = 160.0;
const GAP_Y: f64 = 112.0;
const MARGIN: f64 = 24.0;

/// A node's place and looks in the picture.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub health: &'static str,
    /// `2/2 up`, `no instance`...
    pub caption: String,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// An edge as an SVG path.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub from: String,
    pub to: String,
    pub link: Link,
    pub what: String,
    pub d: String,
}

/// The whole picture.
#[derive(Debug, Clone, Serialize)]
pub struct Picture {
    pub width: f64,
    pub height: f64,
    pub nodes: Vec<Node>,
    pub lines: Vec<Line>,
}

/// Layers by the longest chain of calls leading to each service (the gateway on top, what
/// nothing calls further down), so call arrows point down.
fn layers(names: &[String]) -> HashMap<String, usize> {
    let mut layer: HashMap<String, usize> = names.iter().map(|n| (n.clone(), 0)).collect();
    // Relaxation; bounded by the number of services, so a declared cycle cannot loop forever.
    for _ in 0..names.len() {
        let mut changed = false;
        for edge in EDGES.iter().filter(|e| e.link == Link::Calls) {
            let (Some(&from), Some(&to)) = (layer.get(edge.from), layer.get(edge.to)) else {
                continue;
            };
            if to < from + 1 {
                layer.insert(edge.to.to_owned(), from + 1);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    layer
}

/// Lays out `services` (in their order) and the declared edges between them.
pub fn picture(services: &[ServiceHealth]) -> Picture {
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let layer = layers(&names);
    let mut rows: BTreeMap<usize, Vec<&ServiceHealth>> = BTreeMap::new();
    for service in services {
        rows.entry(layer[&service.name]).or_default().push(service);
    }
    let widest = rows.values().map(Vec::len).max().unwrap_or(1).max(1) as f64;
    let width = MARGIN * 2.0 + (widest - 1.0) * GAP_X + NODE_W;
    let height = MARGIN * 2.0 + (rows.len().max(1) as f64 - 1.0) * GAP_Y + NODE_H;
    let mut nodes = Vec::new();
    let mut place: HashMap<&str, (f64, f64)> = HashMap::new();
    for (row, (_, members)) in rows.iter().enumerate() {
        let span = (members.len() as f64 - 1.0) * GAP_X + NODE_W;
        let left = (width - span) / 2.0;
        for (i, service) in members.iter().enumerate() {
            let x = left + i as f64 * GAP_X;
            let y = MARGIN + row as f64 * GAP_Y;
            place.insert(&service.name, (x, y));
            let total = service.instances.len();
            nodes.push(Node {
                name: service.name.clone(),
                health: service.health,
                caption: if total == 0 {
                    "no instance".to_owned()
                } else {
                    format!("{}/{} healthy", service.healthy, total)
                },
                x,
                y,
                w: NODE_W,
                h: NODE_H,
            });
        }
    }
    let lines = EDGES
        .iter()
        .filter_map(|edge| {
            let (&(x1, y1), &(x2, y2)) = (place.get(edge.from)?, place.get(edge.to)?);
            Some(Line {
                from: edge.from.to_owned(),
                to: edge.to.to_owned(),
                link: edge.link,
                what: edge.what.to_owned(),
                d: path(x1, y1, x2, y2),
            })
        })
        .collect();
    Picture {
        width,
        height,
        nodes,
        lines,
    }
}

/// A curve from the node at (x1, y1) to the node at (x2, y2): bottom to top when the target is
/// lower, top to bottom when it is higher, and a dip under both when they share a row.
fn path(x1: f64, y1: f64, x2: f64, y2: f64) -> String {
    let (cx1, cx2) = (x1 + NODE_W / 2.0, x2 + NODE_W / 2.0);
    if (y1 - y2).abs() < f64::EPSILON {
        let y = y1 + NODE_H;
        let dip = y + GAP_Y * 0.35;
        return format!("M{cx1:.0},{y:.0} C{cx1:.0},{dip:.0} {cx2:.0},{dip:.0} {cx2:.0},{y:.0}");
    }
    let (sy, ty) = if y2 > y1 {
        (y1 + NODE_H, y2)
    } else {
        (y1, y2 + NODE_H)
    };
    let bend = (ty - sy) / 2.0;
    format!(
        "M{cx1:.0},{sy:.0} C{cx1:.0},{:.0} {cx2:.0},{:.0} {cx2:.0},{ty:.0}",
        sy + bend,
        ty - bend
    )
}

/// `GET /admin`: the overview and topology.
pub async fn overview(State(state): State<AppState>, Admin(visitor): Admin) -> Response {
    let chrome = visitor.chrome(&state).await;
    let services = services_health(&state);
    let picture = picture(&services);
    let registry_seen = !state.backend.discovery().snapshot().epoch.is_empty();
    let count = |health: &str| services.iter().filter(|s| s.health == health).count();
    let summary = minijinja::context! {
        up => count("up"),
        degraded => count("degraded"),
        down => count("down"),
        none => count("none"),
        instances => services.iter().map(|s| s.instances.len()).sum::<usize>(),
    };
    let edges: Vec<_> = EDGES
        .iter()
        .map(|e| minijinja::context! { from => e.from, to => e.to, link => e.link, what => e.what })
        .collect();
    render(
        "admin/overview.html",
        minijinja::context! {
            chrome,
            section => "overview",
            services,
            picture,
            edges,
            summary,
            registry_seen,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The services `bazaar up` runs: every crate named in crates/bazaar/src/services.rs as
    /// `bazaar_<name>::NAME`.
    fn runnable_services() -> Vec<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../bazaar/src/services.rs");
        let text = std::fs::read_to_string(path).expect("the service table is readable");
        text.split("bazaar_")
            .skip(1)
            .filter_map(|rest| rest.split_once("::NAME"))
            .map(|(name, _)| name.to_owned())
            .filter(|name| name.chars().all(|c| c.is_ascii_lowercase()))
            .collect()
    }

    #[test]
    fn every_node_of_the_table_is_a_service_bazaar_runs() {
        let runnable = runnable_services();
        assert!(runnable.len() >= 10, "{runnable:?}");
        for known in SERVICES {
            assert!(
                runnable.iter().any(|r| r == known.name),
                "{} is not a service `bazaar up` runs ({runnable:?})",
                known.name
            );
        }
        for name in &runnable {
            assert!(known(name).is_some(), "{name} runs but is not in SERVICES");
        }
        for edge in EDGES {
            for end in [edge.from, edge.to] {
                assert!(
                    known(end).is_some(),
                    "edge end {end} is not a known service"
                );
            }
            assert_ne!(edge.from, edge.to, "{} depends on itself", edge.from);
        }
    }

    #[test]
    fn ages_read_in_the_largest_whole_unit() {
        assert_eq!(ago(42), "42 s");
        assert_eq!(ago(300), "5 min");
        assert_eq!(ago(3 * 3600 + 5), "3 h");
    }

    #[test]
    fn calls_point_down_and_every_service_is_drawn_once() {
        let services: Vec<ServiceHealth> = SERVICES
            .iter()
            .map(|k| ServiceHealth {
                name: k.name.to_owned(),
                what: k.what.to_owned(),
                health: "none",
                healthy: 0,
                instances: Vec::new(),
                versions: Vec::new(),
            })
            .collect();
        let picture = picture(&services);
        assert_eq!(picture.nodes.len(), SERVICES.len());
        assert_eq!(picture.lines.len(), EDGES.len());
        let y = |name: &str| {
            picture
                .nodes
                .iter()
                .find(|n| n.name == name)
                .map(|n| n.y)
                .expect("drawn")
        };
        for edge in EDGES.iter().filter(|e| e.link == Link::Calls) {
            assert!(y(edge.from) < y(edge.to), "{} → {}", edge.from, edge.to);
        }
        assert!(y("gateway") < y("web") && y("web") < y("orders"));
        for node in &picture.nodes {
            assert!(
                node.x >= 0.0 && node.x + node.w <= picture.width,
                "{}",
                node.name
            );
            assert!(
                node.y >= 0.0 && node.y + node.h <= picture.height,
                "{}",
                node.name
            );
        }
    }
}
