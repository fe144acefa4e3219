use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    match ats_hook::run() {
        Ok(code) => code,
        Err(err) => {
            // stderr may be a closed pipe to a pusher who went away: never panic over it.
            let _ = writeln!(std::io::stderr(), "ats-hook: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
