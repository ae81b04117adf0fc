//! Pulls and flattens one image into a state directory and prints the time it took in
//! milliseconds (used by scripts/bench-pull.sh).
//!
//! usage: pull-bench [--scratch DIR] STATE_DIR REFERENCE [PLAIN_HTTP_HOST...]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use vmlet_agent::images::{
    Credentials, ImageManager, ImageManagerConfig, RegistriesConfig, RegistryHost,
};

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut scratch_dir = None;
    if args.first().map(String::as_str) == Some("--scratch") && args.len() > 1 {
        scratch_dir = Some(PathBuf::from(args.remove(1)));
        args.remove(0);
    }
    let (Some(state), Some(reference)) = (args.first(), args.get(1)) else {
        eprintln!("usage: pull-bench [--scratch DIR] STATE_DIR REFERENCE [PLAIN_HTTP_HOST...]");
        return ExitCode::from(2);
    };
    let hosts: HashMap<String, RegistryHost> = args[2..]
        .iter()
        .map(|h| {
            let host = RegistryHost {
                plain_http: true,
                ..Default::default()
            };
            (h.clone(), host)
        })
        .collect();
    let config = ImageManagerConfig {
        state_dir: PathBuf::from(state),
        registries: RegistriesConfig { hosts },
        scratch_dir,
        limits: Default::default(),
    };
    let manager = match ImageManager::open(config).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("pull: {e}");
            return ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    match manager.pull(reference, &Credentials::default()).await {
        Ok(out) => {
            println!("{}", start.elapsed().as_millis());
            let t = out.timings;
            eprintln!(
                "pulled {} ({} bytes): fetch {} ms, unpack {} ms, mkfs {} ms",
                out.image.id,
                out.image.size,
                t.fetch.as_millis(),
                t.unpack.as_millis(),
                t.mkfs.as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pull: {e}");
            ExitCode::FAILURE
        }
    }
}
