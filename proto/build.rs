//! Generates the sonde.v1 client and server code from `proto/sonde/v1/*.proto` with protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/sonde/v1/agent.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["proto"])?;
    Ok(())
}
