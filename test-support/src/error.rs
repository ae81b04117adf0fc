//! The fixtures' error type and the one helper that runs a command: the bottom of the
//! crate, which every other module uses and which uses none of them.

use std::io;
use std::process::Command;

/// Errors of the fixtures.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A command failed or is missing.
    #[error("{cmd}: {message}")]
    Command {
        /// The command.
        cmd: String,
        /// What went wrong (stderr).
        message: String,
    },
    /// A file operation failed.
    #[error("fixture i/o: {0}")]
    Io(#[from] io::Error),
    /// The registry did not come up.
    #[error("registry did not start: {0}")]
    NotReady(String),
}

/// Runs `cmd` and returns its stdout; a failure to start or a non-zero status is an
/// error that carries the command and its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String, FixtureError> {
    let name = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| FixtureError::Command {
        cmd: name.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(FixtureError::Command {
            cmd: name,
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
