use clap::Parser;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

use vmidentity::cli::{Cli, Command, run};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let controller = matches!(cli.command, Command::Controller(_));
    let default = if controller { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // JSON logs in-cluster (the controller without a terminal), readable ones on a terminal.
    let json = match std::env::var("VMIDENTITY_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => controller && !std::io::stderr().is_terminal(),
    };
    // Colour only when a person reads it: the text format written into a file or a pipe
    // carries no ANSI escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    std::process::exit(code);
}
