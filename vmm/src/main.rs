//! `vmlet-vmm`: runs one micro-VM. See `vmlet_vmm::cli` for the flags.

fn main() {
    std::process::exit(vmlet_vmm::cli::main());
}
