//! Compiles `protos/*.proto` into Rust (messages + ttrpc stubs) in `OUT_DIR`
//! with ttrpc-codegen's pure-Rust parser: no `protoc` needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &["health", "agent"];

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let inputs: Vec<String> = PROTOS.iter().map(|p| format!("protos/{p}.proto")).collect();
    for input in &inputs {
        println!("cargo:rerun-if-changed={input}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .inputs(&inputs)
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            // One crate serves both sides: the agent (server) and the host (client).
            ..Default::default()
        })
        .run()
        .expect("ttrpc-codegen failed on agent/protocol/protos");

    // Sibling modules, as the generated `*_ttrpc.rs` files refer to `super::<proto>`.
    let mut mod_rs = String::new();
    for p in PROTOS {
        mod_rs.push_str(&format!("pub mod {p};\npub mod {p}_ttrpc;\n"));
    }
    std::fs::write(out_dir.join("mod.rs"), mod_rs).expect("writing generated mod.rs");
}
