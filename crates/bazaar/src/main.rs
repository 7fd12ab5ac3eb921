//! The `bazaar` binary: parses the command line and hands each subcommand to its module.

use clap::Parser;

mod api;
mod audit;
mod bench;
mod cli;
mod keys;
mod login;
mod logs;
mod output;
mod products;
mod reconcile;
mod serve;
mod services;
mod session;
mod shop;
mod status;
mod supervisor;

/// Every bazaar process allocates through mimalloc: a checkout makes thousands of small,
/// short-lived allocations (JSON bodies, headers, rows), and glibc's malloc and free took about
/// 9% of the services' CPU under the checkout benchmark (docs/performance.md, seventh round).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async move {
        match cli.command {
            cli::Command::Up(args) => supervisor::up(cli.global, args).await,
            cli::Command::Serve(args) => serve::serve(cli.global, args).await,
            cli::Command::Status(args) => status::status(cli.global, args).await,
            cli::Command::Products(args) => products::products(cli.global, args).await,
            cli::Command::Bench(args) => bench::bench(cli.global, args).await,
            cli::Command::Audit(args) => audit::audit(cli.global, args).await,
            cli::Command::Cart(args) => shop::cart(cli.global, args).await,
            cli::Command::Checkout(args) => shop::checkout(cli.global, args).await,
            cli::Command::Orders(args) => shop::orders(cli.global, args).await,
            cli::Command::Reconcile(args) => reconcile::reconcile(cli.global, args).await,
            cli::Command::Login(args) => login::login(cli.global, args).await,
            cli::Command::Logout => login::logout(cli.global).await,
            cli::Command::Whoami => login::whoami(cli.global).await,
            cli::Command::Keys(args) => keys::keys(cli.global, args).await,
            cli::Command::Logs(args) => logs::logs(cli.global, args).await,
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
