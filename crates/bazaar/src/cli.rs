//! Command-line interface definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Where `bazaar up` keeps its data unless told otherwise; `audit` and `logs` look there too.
pub const DEFAULT_DATA_DIR: &str = ".bazaar";

#[derive(Debug, Parser)]
#[command(
    name = "bazaar",
    version,
    about = "bazaar: a microservices shop you can run, read, break and extend"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Configuration file (default: ./bazaar.toml when it exists).
    #[arg(long, global = true, env = "BAZAAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Gateway base URL, for client commands.
    #[arg(
        long,
        global = true,
        env = "BAZAAR_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway: String,
    /// Registry base URL, for `status`.
    #[arg(long, global = true, env = "BAZAAR_REGISTRY_URL", default_value = bazaar_kit::config::DEFAULT_REGISTRY_URL)]
    pub registry: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Access token sent as `Authorization: Bearer` by client commands (default: the stored
    /// sign-in from `bazaar login` for `--gateway`).
    #[arg(long, global = true, env = "BAZAAR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system: every service as its own supervised process.
    Up(UpArgs),
    /// Run one service in this process (what a container runs).
    Serve(ServeArgs),
    /// Health of every registered instance.
    Status(StatusArgs),
    /// Browse and manage the product catalogue through the gateway.
    Products(ProductsArgs),
    /// Measure throughput and latency: the gateway, token grants, checkouts.
    Bench(BenchArgs),
    /// Check the audit logs.
    Audit(AuditArgs),
    /// The signed-in user's cart.
    Cart(CartArgs),
    /// Check out the signed-in user's cart with a card.
    Checkout(CheckoutArgs),
    /// The signed-in user's orders.
    Orders(OrdersArgs),
    /// Check that orders, stock, payments and shipments agree (after chaos).
    Reconcile(ReconcileArgs),
    /// Sign in through the browser (authorization code + PKCE, loopback redirect) and store
    /// the tokens for `--gateway` in the config directory.
    Login(LoginArgs),
    /// Sign out: revoke the stored sign-in for `--gateway` and forget it.
    Logout,
    /// Who is signed in for `--gateway`.
    Whoami,
    /// Your API keys for the public API, their plans and usage.
    Keys(KeysArgs),
    /// Show a service's log file, written by `bazaar up --log-files`.
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Loopback port to receive the browser's redirect on (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// How long to wait for the sign-in in the browser, e.g. `5m`, `90s`.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List your keys (never their secrets).
    List,
    /// Create a key; the key itself is printed this once.
    Create {
        /// A name to tell the key apart, 1 to 64 characters.
        #[arg(long)]
        name: String,
        /// The plan (see `bazaar keys plans`).
        #[arg(long, default_value = "free-trial")]
        plan: String,
    },
    /// Revoke a key by id.
    Revoke { id: String },
    /// Today's and this month's usage of each key against its plan's quotas.
    Usage,
    /// The plans keys can be issued on.
    Plans,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The service (or replica label, e.g. `catalog-2`) whose log to show.
    pub service: String,
    /// The data directory `bazaar up` used.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Lines to show from the end of the log (0: all).
    #[arg(long, short = 'n', default_value_t = 50)]
    pub lines: usize,
    /// Keep printing lines as they are written.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct CartArgs {
    #[command(subcommand)]
    pub command: CartCommand,
}

#[derive(Debug, Subcommand)]
pub enum CartCommand {
    /// Show the cart.
    Show,
    /// Add a quantity of a product.
    Add {
        product_id: String,
        #[arg(default_value_t = 1)]
        quantity: u32,
    },
    /// Set a line's quantity (0 removes it).
    Set { product_id: String, quantity: u32 },
    /// Remove a line.
    Remove { product_id: String },
}

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// Card number (see `GET /api/v1/payments/test-cards`; 4242424242424242 succeeds).
    #[arg(long, default_value = "4242424242424242")]
    pub card: String,
    /// Card expiry, MM/YY.
    #[arg(long, default_value = "12/30")]
    pub expiry: String,
    #[arg(long, default_value = "123")]
    pub cvc: String,
    #[arg(long, default_value = "Demo Shopper")]
    pub name: String,
    #[arg(long, default_value = "1 Main Street")]
    pub line1: String,
    #[arg(long, default_value = "New York")]
    pub city: String,
    /// ISO 3166-1 alpha-2 country code.
    #[arg(long, default_value = "US")]
    pub country: String,
    #[arg(long, default_value = "10001")]
    pub postal_code: String,
    /// Currency to charge in (default: the catalogue's).
    #[arg(long)]
    pub currency: Option<String>,
    /// Reuse a key to retry a checkout without placing a second order.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait until the order is confirmed or cancelled.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait with `--wait`.
    #[arg(long, default_value_t = 60)]
    pub wait_seconds: u64,
}

#[derive(Debug, Args)]
pub struct OrdersArgs {
    #[command(subcommand)]
    pub command: OrdersCommand,
}

#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// The user's orders, newest first.
    List,
    /// One order with its saga's steps.
    Show { id: String },
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Exit 0 even when inconsistencies are found.
    #[arg(long)]
    pub allow_findings: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of every service's audit log (read from its database).
    Verify {
        /// The data directory `bazaar up` uses.
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Check one database instead (sqlite:// or postgres://).
        #[arg(long)]
        database_url: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Gateway port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Where every service keeps its data (one subdirectory each).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Start only these services (comma-separated); the registry always starts.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Start every service except these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub without: Vec<String>,
    /// Port of the first non-gateway service; the others follow.
    #[arg(long, default_value_t = 8081)]
    pub base_port: u16,
    /// Instances of each business service to start.
    #[arg(long, default_value_t = 1)]
    pub replicas: u16,
    /// Write each service's output to <data-dir>/logs/<service>.log instead of the terminal.
    #[arg(long)]
    pub log_files: bool,
    /// Let the OS move each service's threads between CPUs. By default each service process
    /// is kept on one CPU (round robin over the CPUs `up` may use), which saves the cost of
    /// waking its threads across CPUs.
    #[arg(long)]
    pub no_pin_cpus: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The service to run.
    pub service: String,
    /// Port to listen on (overrides configuration).
    #[arg(long)]
    pub port: Option<u16>,
    /// Interface to listen on (overrides configuration).
    #[arg(long)]
    pub host: Option<String>,
    /// This service's data directory (overrides configuration).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Database URL, sqlite:// or postgres:// (overrides configuration).
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Exit non-zero unless every instance is up.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct ProductsArgs {
    #[command(subcommand)]
    pub command: ProductsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProductsCommand {
    /// List products, with search, filter, sort and paging.
    List {
        /// Text to search in names and descriptions.
        #[arg(long, short)]
        q: Option<String>,
        /// Category slug.
        #[arg(long, short)]
        category: Option<String>,
        /// name, -name, price, -price, newest.
        #[arg(long)]
        sort: Option<String>,
        #[arg(long, default_value_t = 1)]
        page: u32,
        #[arg(long, default_value_t = 20)]
        per_page: u32,
    },
    /// Show one product.
    Get { id: String },
    /// List categories.
    Categories,
    /// Create a product from a JSON file (`-` for standard input).
    Create { file: PathBuf },
    /// Replace a product from a JSON file (`-` for standard input).
    Update { id: String, file: PathBuf },
    /// Delete a product.
    Delete { id: String },
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load the catalog directly and through the gateway, and compare.
    Gateway {
        /// Concurrent connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Path to request.
        #[arg(long, default_value = "/api/v1/products/kitchen-espresso-cup-set")]
        path: String,
        /// Run against an already running system instead of starting one.
        #[arg(long)]
        external: bool,
    },
    /// Client-credentials grants per second, and gateway requests per second with a verified
    /// JWT against the same request anonymous.
    Auth {
        /// Concurrent connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Checkouts per second through the gateway of a running system (`--gateway`): orders
    /// accepted and confirmed per second, placement and placement-to-confirmed latency.
    Checkout(CheckoutBenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CheckoutBenchArgs {
    /// Concurrent placement loops (each with its own keep-alive connection and one request in
    /// flight).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of measured placement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of unmeasured placement first (connections, caches and pools warm up).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Longest wait after the window for placed orders to reach a terminal status.
    #[arg(long, default_value_t = 60)]
    pub drain: u64,
    /// Closed loop: each connection waits for its order to be confirmed or cancelled (polling
    /// its status) before placing the next, so the load is what the saga sustains. Without
    /// it, orders are placed as fast as they are accepted and a backlog can build up.
    #[arg(long)]
    pub closed_loop: bool,
    /// With `--closed-loop`: ask for the outcome with the placement (`Prefer: wait=5`, one
    /// request per order) instead of a second, status request. The placement latency is then
    /// the time to that answer, which carries the outcome.
    #[arg(long, requires = "closed_loop")]
    pub prefer_wait: bool,
    /// Shoppers to register and sign in (default: three per connection with `--closed-loop`, which
    /// takes turns between them, one otherwise).
    #[arg(long)]
    pub users: Option<usize>,
    /// The product every order buys one unit of.
    #[arg(long, default_value = "kitchen-espresso-cup-set")]
    pub product: String,
    /// Units each warehouse is topped up to before the run, so stock cannot run out.
    #[arg(long, default_value_t = 500_000)]
    pub stock: i64,
    /// An admin account, to top up the stock.
    #[arg(long, default_value = "admin@bazaar.test")]
    pub admin_email: String,
    #[arg(long, default_value = "admin-pass-1", hide_default_value = true)]
    pub admin_password: String,
}
