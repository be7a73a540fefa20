// Generates the rcd.v1 clients and servers with tonic-prost-build, which runs `protoc`
// (Debian's protobuf-compiler, installed by scripts/deps.sh; or $PROTOC).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/rcd/v1/version.proto",
        "proto/rcd/v1/images.proto",
        "proto/rcd/v1/content.proto",
        "proto/rcd/v1/snapshots.proto",
        "proto/rcd/v1/leases.proto",
    ];
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
