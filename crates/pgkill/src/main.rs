//! The `pgkill` binary: parse arguments, dispatch, exit with the documented code.
fn main() {
    std::process::exit(pgkill_cli::main());
}
