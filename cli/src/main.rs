use clap::Parser;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;
use vdc_cli::commands::{self, Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Up(args) = cli.command {
        // `up` runs the whole cloud and sets up its own logging.
        return match run_up(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(cli.global.verbose);
    match commands::run(&cli.global, cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.report());
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run_up(args: commands::UpArgs) -> anyhow::Result<()> {
    vdc_cli::up::run(args).await
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "vdc_cli=debug,warn",
        _ => "vdc_cli=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
