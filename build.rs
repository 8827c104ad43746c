//! Generates the daemon↔monitor protocol types from `proto/monitor.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/monitor.proto");
    prost_build::compile_protos(&["proto/monitor.proto"], &["proto"])?;
    Ok(())
}
