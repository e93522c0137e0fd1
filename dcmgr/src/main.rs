//! `dcmgr`: the central controller of a multi-host vdc.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use vdc_dcmgr::{server, Config, Dcmgr};

#[derive(Parser)]
#[command(name = "dcmgr", version, about = "vdc central controller: Web API, scheduler, reconcilers")]
struct Cli {
    /// TOML configuration file (see packaging/examples/dcmgr.toml).
    #[arg(long, short, env = "DCMGR_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Overrides `database_url` (sqlite://PATH or postgres://…).
    #[arg(long, env = "DCMGR_DATABASE_URL")]
    database_url: Option<String>,
    /// Overrides `nats_url`.
    #[arg(long, env = "DCMGR_NATS_URL")]
    nats_url: Option<String>,
    /// Creates (or keeps) an admin account that accepts this token.
    #[arg(long, env = "DCMGR_ADMIN_TOKEN")]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the OpenAPI document.
    Openapi,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        println!("{}", serde_json::to_string_pretty(&vdc_dcmgr::http::openapi())?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(v) = cli.listen {
        config.listen = v;
    }
    if let Some(v) = cli.database_url {
        config.database_url = v;
    }
    if let Some(v) = cli.nats_url {
        config.nats_url = Some(v);
    }
    if let Some(v) = cli.admin_token {
        config.admin_token = Some(v);
    }
    let dcmgr = Dcmgr::start(config, server::Options::default()).await?;
    println!("dcmgr listening on {}", dcmgr.url());
    tokio::select! {
        // SIGTERM too: systemd's stop and a container's stop send it, and the drain
        // (requests under way answered, no new ones) is the same as for Ctrl-C.
        _ = vdc_bus::sim::shutdown_signal() => {}
        _ = dcmgr.wait() => {}
    }
    dcmgr.stop().await;
    Ok(())
}
