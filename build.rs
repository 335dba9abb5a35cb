//! Compiles proto/*.proto into Rust types with prost. protox parses the schema in pure Rust,
//! so a fresh machine needs no system protoc.

fn main() {
    let mut protos: Vec<_> = std::fs::read_dir("proto")
        .expect("proto/ directory")
        .map(|entry| entry.expect("proto/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(&protos, ["proto"]).expect("proto/ schema compiles");
    prost_build::Config::new()
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)
        .expect("prost code generation");
}
