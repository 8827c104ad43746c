//! Generates the CRI v1 types, client and server from the vendored
//! `proto/cri/api.proto` (kubernetes/cri-api, see proto/README.md).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/cri/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    // Debian 12's protoc (3.21) predates the `debug_redact` field option
    // (protobuf 22) the API marks credentials with; it only changes how
    // Go prints them, so the copy compiled here leaves it out.
    let text = std::fs::read_to_string(proto)?.replace(" [debug_redact = true]", "");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("cri");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("api.proto"), text)?;
    tonic_prost_build::configure()
        // crius stores CRI configs in its records as JSON.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // The schema itself, for tools that walk every message (the fuzz test).
        .file_descriptor_set_path(out.join("descriptor.bin"))
        .compile_protos(&[out.join("api.proto")], &[out])?;
    Ok(())
}
