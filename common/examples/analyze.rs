//! `cargo run -p common --example analyze -- <dir>`: the analyzer without building ztunnel.

fn main() {
    let dir = std::env::args().nth(1).expect("usage: analyze <dir>");
    let code = common::analyze::run_cli(std::path::Path::new(&dir), &mut std::io::stdout());
    std::process::exit(code);
}
