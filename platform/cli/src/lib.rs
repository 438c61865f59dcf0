//! `tartarus`, the command line of the Tartarus sandbox platform: a client of `tartarusd`'s
//! JSON REST API (see `README.md` for every command).
//!
//! Layout: [`cli`] (clap types), [`config`] (profiles and precedence), [`client`] (HTTP/1.1
//! over a Unix socket or TCP, NDJSON streams, upgrades), [`spec`] (template spec files),
//! [`output`] (tables, sizes, exit codes) and [`commands`] (one module per command group).

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod output;
pub mod spec;
pub mod tls;

use clap::Parser;

/// Runs the CLI with the process's arguments; returns the exit code.
pub fn main_entry() -> i32 {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tartarus: {}", error_line(&e));
            if let commands::CmdError::Hinted { hint, .. } = &e {
                eprintln!("hint: {hint}");
            }
            e.exit_code()
        }
    }
}

/// The error's line: a 401 or 403 says so first (`unauthorized: API key revoked`).
pub fn error_line(e: &commands::CmdError) -> String {
    match e {
        commands::CmdError::Hinted { source, .. } => error_line(source),
        commands::CmdError::Client(client::ClientError::Api { code, message, .. })
            if matches!(code.as_str(), "unauthorized" | "forbidden")
                && !message.starts_with(code.as_str()) =>
        {
            format!("{code}: {message}")
        }
        _ => e.to_string(),
    }
}
