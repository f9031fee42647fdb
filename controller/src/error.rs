//! The error that ends a command (CLI subcommand or the controller): printed as one line, exit
//! code 1. Below `cli`, `demo` and `operator`, which all return it.

use crate::input::InputError;

/// A failure that ends the command: printed as one line, exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    Other(String),
}
