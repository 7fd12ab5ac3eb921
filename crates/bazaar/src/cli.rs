//! Command-line interface definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Access token sent as `Authorization: Bearer` by client commands (admin writes need one).
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
    /// Measure gateway throughput and added latency.
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
        #[arg(long, default_value = ".bazaar")]
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
    #[arg(long, default_value = ".bazaar")]
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
}
