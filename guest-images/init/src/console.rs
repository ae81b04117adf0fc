//! Console output: one line per event on stdout, which the kernel opened on `/dev/console`.
//!
//! Every line starts with `vmlet-init: ` so the host can tell our lines from the kernel's.
//! Writes never fail loudly: a PID 1 without a console must keep running.

use std::fmt::Display;
use std::io::Write;

/// The prefix of every console line.
pub const PREFIX: &str = "vmlet-init: ";

/// Writes `vmlet-init: <msg>` as one line.
pub fn info(msg: impl Display) {
    write_line(&format_line("", &msg));
}

/// Writes `vmlet-init: error: <msg>` as one line.
pub fn error(msg: impl Display) {
    write_line(&format_line("error: ", &msg));
}

/// Builds one console line; newlines inside `msg` are flattened so an event stays one line.
fn format_line(kind: &str, msg: &dyn Display) -> String {
    let text = msg.to_string().replace(['\r', '\n'], " ");
    format!("{PREFIX}{kind}{text}\n")
}

fn write_line(line: &str) {
    if cfg!(test) {
        // Under `cargo test`, let the harness capture console lines.
        print!("{line}");
        return;
    }
    let mut out = std::io::stdout().lock();
    // Errors are ignored on purpose: there is nowhere else to report them.
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_single() {
        assert_eq!(format_line("", &"started"), "vmlet-init: started\n");
        assert_eq!(
            format_line("error: ", &"a\nb\r\nc"),
            "vmlet-init: error: a b  c\n"
        );
    }
}
