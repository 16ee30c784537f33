//! Keeps the committed Rust bindings in `src/generated/` in step with `schema/*.capnp`.
//!
//! The bindings are committed so that `cargo build` works on a machine with only the Rust toolchain.
//! Each generated file records a digest of every schema file it was made from:
//!
//! * a normal build only recomputes that digest and fails, naming the fix, when a schema file changed
//!   but the bindings were not regenerated (so drift can never compile);
//! * `PSP_REGENERATE_BINDINGS=1` (what `scripts/regenerate-bindings` sets) runs the Cap'n Proto
//!   compiler through `capnpc` and rewrites `src/generated/`. CI does this and fails on any
//!   `git diff`, which also catches hand edits to the generated files.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// First line of every generated file; the digest follows it.
const DIGEST_TAG: &str = "// schema-digest: ";

fn main() {
    println!("cargo:rerun-if-changed=schema");
    println!("cargo:rerun-if-changed=src/generated");
    println!("cargo:rerun-if-env-changed=PSP_REGENERATE_BINDINGS");

    let schemas = schema_files();
    for schema in &schemas {
        println!("cargo:rerun-if-changed={}", schema.display());
    }
    let digest = schema_digest(&schemas);

    if std::env::var_os("PSP_REGENERATE_BINDINGS").is_some_and(|v| v != "0") {
        regenerate(&schemas, &digest);
    } else {
        check_bindings(&schemas, &digest);
    }
}

/// The schema files, sorted by name so the digest does not depend on directory order.
fn schema_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir("schema")
        .expect("schema/ must exist next to build.rs")
        .map(|entry| entry.expect("readable schema/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "capnp"))
        .collect();
    files.sort();
    files
}

/// SHA-256 over each schema file's name and contents. Carriage returns are dropped so a checkout with
/// Windows line endings computes the same digest.
fn schema_digest(schemas: &[PathBuf]) -> String {
    let mut hasher = Sha256::new();
    for schema in schemas {
        let name = schema.file_name().expect("file name").to_string_lossy();
        let text = fs::read(schema).expect("readable schema file");
        let text: Vec<u8> = text.into_iter().filter(|&b| b != b'\r').collect();
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(&text);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the committed binding for one schema file lives.
fn binding_path(schema: &Path) -> PathBuf {
    let stem = schema.file_stem().expect("file stem").to_string_lossy();
    Path::new("src/generated").join(format!("{stem}_capnp.rs"))
}

fn check_bindings(schemas: &[PathBuf], digest: &str) {
    for schema in schemas {
        let binding = binding_path(schema);
        let recorded = fs::read_to_string(&binding).ok().and_then(|text| {
            text.lines()
                .next()
                .and_then(|line| line.strip_prefix(DIGEST_TAG))
                .map(str::to_owned)
        });
        if recorded.as_deref() != Some(digest) {
            panic!(
                "\n\nThe committed bindings in {} do not match schema/ (schema digest {digest}, \
                 bindings made from {}).\nRegenerate them with `scripts/regenerate-bindings` \
                 (needs the `capnp` compiler: Debian packages capnproto and libcapnp-dev) \
                 and commit src/generated/.\n\n",
                binding.display(),
                recorded.as_deref().unwrap_or("no recorded digest"),
            );
        }
    }
}

fn regenerate(schemas: &[PathBuf], digest: &str) {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let scratch = out_dir.join("bindings");
    fs::create_dir_all(&scratch).expect("create scratch dir");

    let mut command = capnpc::CompilerCommand::new();
    command.src_prefix("schema").output_path(&scratch);
    for schema in schemas {
        command.file(schema);
    }
    // capnpc reports a failed `capnp compile` only as "Premature end of file"; the compiler's own
    // message is on this build script's stderr (cargo prints it with -vv or on failure).
    if let Err(error) = command.run() {
        panic!(
            "capnp compile failed: {error}\nIs the Cap'n Proto compiler installed \
             (Debian packages capnproto and libcapnp-dev)? Its message is above."
        );
    }

    fs::create_dir_all("src/generated").expect("create src/generated");
    for schema in schemas {
        let binding = binding_path(schema);
        let made = scratch.join(binding.file_name().expect("file name"));
        let code = fs::read_to_string(&made).expect("capnpc wrote the binding");
        let text = format!(
            "{DIGEST_TAG}{digest}\n\
             // Regenerate with `scripts/regenerate-bindings`; never edit by hand.\n\
             {code}"
        );
        fs::write(&binding, text).expect("write committed binding");
    }
}
