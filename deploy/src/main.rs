//! `switchyard-deploy generate [--check] [DIR]`: writes (or, with `--check`,
//! compares) the generated manifests in DIR (default: this package's
//! directory, `deploy/`).

use std::path::PathBuf;
use std::process::ExitCode;

use switchyard_deploy::{Variant, render};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut check = false;
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut command = None;
    for arg in &args {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: switchyard-deploy generate [--check] [DIR]");
                return ExitCode::SUCCESS;
            }
            "generate" if command.is_none() => command = Some(arg.clone()),
            other if command.is_some() => dir = PathBuf::from(other),
            other => {
                eprintln!(
                    "switchyard-deploy: unknown command {other:?}; usage: switchyard-deploy generate [--check] [DIR]"
                );
                return ExitCode::from(2);
            }
        }
    }
    if command.is_none() {
        eprintln!("usage: switchyard-deploy generate [--check] [DIR]");
        return ExitCode::from(2);
    }
    let mut stale = false;
    for variant in Variant::ALL {
        let path = dir.join(variant.file_name());
        let text = render(variant);
        if check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != text {
                eprintln!(
                    "{} is out of date: run `cargo run -p switchyard-deploy -- generate`",
                    path.display()
                );
                stale = true;
            }
        } else if let Err(err) = std::fs::write(&path, text) {
            eprintln!("switchyard-deploy: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
