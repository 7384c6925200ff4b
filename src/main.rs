//! The `vdrive` command (and `kubectl-vdrive`, the same binary by another name).

use std::process::ExitCode;

fn main() -> ExitCode {
    vdrive::cli::app::main()
}
