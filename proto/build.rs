// Generates the rcd.v1 clients and servers with tonic-prost-build, which runs `protoc`
// (Debian's protobuf-compiler, installed by scripts/deps.sh; or $PROTOC).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/rcd/v1/version.proto",
        "proto/rcd/v1/images.proto",
        "proto/rcd/v1/content.proto",
        "proto/rcd/v1/snapshots.proto",
        "proto/rcd/v1/leases.proto",
        "proto/rcd/v1/containers.proto",
        "proto/rcd/v1/tasks.proto",
        "proto/rcd/v1/namespaces.proto",
        "proto/rcd/v1/events.proto",
        "proto/rcd/v1/introspection.proto",
        "proto/rcd/v1/networks.proto",
    ];
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
