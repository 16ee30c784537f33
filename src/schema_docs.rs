//! The schema is documentation for implementers in other languages: every struct, interface,
//! enum, field, enumerant and method in `schema/` must carry a comment. A member counts as
//! documented when a `#` comment follows it on the same line or on the lines right after it
//! (Cap'n Proto's convention). Each member needs its own comment.

use std::path::Path;

/// A declaration line: something with an ordinal (`name @3 ...`) or a type/union/group opener.
fn is_declaration(line: &str) -> bool {
    let code = line.split('#').next().unwrap_or("").trim();
    if code.is_empty() || code.starts_with("using ") || code.starts_with("const ") {
        return false;
    }
    let has_ordinal = code.split_whitespace().any(|w| {
        w.starts_with('@')
            && w[1..]
                .trim_end_matches([';', '('])
                .chars()
                .all(|c| c.is_ascii_digit())
            && w.len() > 1
    });
    let opens_type = ["struct ", "interface ", "enum "]
        .iter()
        .any(|k| code.starts_with(k));
    has_ordinal || opens_type
}

fn undocumented(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("schema file is readable");
    let lines: Vec<&str> = text.lines().collect();
    let mut missing = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !is_declaration(line) || line.contains('#') {
            continue;
        }
        let documented = lines
            .get(i + 1)
            .is_some_and(|next| next.trim().starts_with('#'));
        if !documented {
            missing.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
        }
    }
    missing
}

#[test]
fn every_schema_member_is_documented() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
    let mut missing = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "capnp") {
            files += 1;
            missing.extend(undocumented(&path));
        }
    }
    assert!(files >= 4, "expected the PSP schema files, found {files}");
    assert!(
        missing.is_empty(),
        "undocumented schema members:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_checker_sees_a_missing_comment() {
    let dir = std::env::temp_dir().join(format!("psp-schema-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("probe.capnp");
    std::fs::write(
        &file,
        "struct A {\n  # An A.\n  x @0 :UInt8;\n  # Documented.\n  y @1 :UInt8;\n}\n",
    )
    .unwrap();
    let missing = undocumented(&file);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(missing[0].contains("y @1"));
}
