//! Generates Rust from the `.proto` files. Needs `protoc` (Debian `protobuf-compiler`, installed by
//! `deploy/install-deps.sh`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "pixelgrid/types/v1/types.proto",
        "pixelgrid/orchestrator/v1/orchestrator.proto",
        "pixelgrid/indexer/v1/indexer.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    if std::env::var_os("PROTOC").is_none() && which_protoc().is_none() {
        return Err("protoc not found: install Debian's `protobuf-compiler` \
                    (deploy/install-deps.sh does) or set PROTOC"
            .into());
    }
    tonic_prost_build::configure().compile_protos(&protos, &["."])?;
    Ok(())
}

fn which_protoc() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("protoc"))
            .find(|candidate| candidate.is_file())
    })
}
