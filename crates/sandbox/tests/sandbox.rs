//! The sandbox itself, on every PostgreSQL version: servers start and stop cleanly, and
//! every simulated session kind shows up on the server as it should.
fn main() {
    pgkill_sandbox::matrix::main(pgkill_sandbox::cases![]);
}
