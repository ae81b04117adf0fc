//! vmletd: parse the flags, load the configuration, run the daemon.

use clap::Parser;
use vmlet_agent::config::{Args, Config};
use vmlet_agent::daemon;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(&args)?;
    if args.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    daemon::init_logging(&config.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(daemon::run(config))?;
    Ok(())
}
