//! `refit`: the command line.
fn main() {
    println!("refit {}", refit_proto::REFIT_VERSION);
}
