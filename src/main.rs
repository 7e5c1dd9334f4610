use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shardwallet::cli::Cli::parse();
    shardwallet::telemetry::init(if cli.is_server() { "info" } else { "warn" });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
