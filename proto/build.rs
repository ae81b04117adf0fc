//! Compiles the host ⇄ guest protocol with protoc (Debian's protobuf-compiler,
//! installed by scripts/setup.sh; or the one named by $PROTOC).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "vmlet/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure().compile_protos(&[proto], &["."])?;
    Ok(())
}
