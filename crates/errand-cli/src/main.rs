//! The `errand` command. All logic lives in the library; this only maps errors to exit codes.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = errand_cli::Cli::parse();
    let log_format = cli.log_format;
    match errand_cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            errand_cli::report_error(log_format, &e);
            std::process::ExitCode::FAILURE
        }
    }
}
