//! Writing to stdout without panicking when the reader goes away (`vmidentity plan | head`).

use std::io::Write;

/// Writes `s` to stdout. A closed pipe ends the process quietly, as Unix tools do.
pub fn emit(s: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        tracing::warn!(error = %e, "cannot write to stdout");
    }
}

/// `println!` through [`emit`].
#[macro_export]
macro_rules! outln {
    () => { $crate::out::emit("\n") };
    ($($arg:tt)*) => { $crate::out::emit(&format!("{}\n", format!($($arg)*))) };
}

/// `print!` through [`emit`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::emit(&format!($($arg)*)) };
}
