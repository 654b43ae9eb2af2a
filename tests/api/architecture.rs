//! The module graph flows one way (ARCHITECTURE.md, "Code map"): each top-level module names
//! the modules it must not import, and this test reads the sources to hold it to that. A text
//! check, not a compiler one — `crate::x` paths are how every module here imports another.

use std::path::Path;

/// (module directory or file, modules it must not import).
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "src/domain",
        &[
            "store",
            "ledger",
            "queue",
            "reconcile",
            "alerts",
            "intake",
            "jobs",
            "app",
            "config",
            "retry",
            "webhooks",
        ],
    ),
    (
        "src/retry.rs",
        &[
            "store",
            "ledger",
            "queue",
            "reconcile",
            "alerts",
            "intake",
            "jobs",
            "app",
            "config",
            "webhooks",
        ],
    ),
    (
        "src/queue",
        &[
            "store",
            "ledger",
            "reconcile",
            "alerts",
            "intake",
            "jobs",
            "app",
            "config",
            "webhooks",
        ],
    ),
    (
        "src/store",
        &[
            "ledger",
            "reconcile",
            "alerts",
            "intake",
            "jobs",
            "app",
            "config",
            "webhooks",
        ],
    ),
    (
        "src/ledger",
        &[
            "store",
            "reconcile",
            "alerts",
            "intake",
            "jobs",
            "app",
            "config",
            "webhooks",
        ],
    ),
    (
        "src/alerts",
        &[
            "store",
            "ledger",
            "reconcile",
            "intake",
            "jobs",
            "app",
            "config",
            "webhooks",
        ],
    ),
    (
        "src/anomaly",
        &[
            "ledger",
            "reconcile",
            "intake",
            "jobs",
            "app",
            "config",
            "webhooks",
        ],
    ),
    (
        "src/reconcile",
        &[
            "store", "ledger", "intake", "jobs", "app", "config", "webhooks",
        ],
    ),
    (
        "src/intake",
        &["ledger", "jobs", "app", "config", "console"],
    ),
    // The console sits beside intake and acts only through intake's handlers: no posting,
    // no job handlers, no direct webhook or anomaly machinery.
    (
        "src/console",
        &["ledger", "jobs", "app", "config", "webhooks", "anomaly"],
    ),
    // The event log sits just above the domain: every writer of a change writes its event.
    (
        "src/events",
        &[
            "retry",
            "store",
            "ledger",
            "queue",
            "reconcile",
            "alerts",
            "anomaly",
            "intake",
            "jobs",
            "app",
            "config",
            "webhooks",
        ],
    ),
    // Webhooks read the event log and raise alerts; nothing below them knows they exist.
    (
        "src/webhooks",
        &[
            "store",
            "ledger",
            "queue",
            "reconcile",
            "anomaly",
            "intake",
            "jobs",
            "app",
            "config",
        ],
    ),
    ("jobs", &["intake", "store", "app", "config"]),
    // Read by every settings section; a leaf.
    (
        "src/serde_duration.rs",
        &[
            "domain",
            "retry",
            "store",
            "ledger",
            "queue",
            "reconcile",
            "alerts",
            "intake",
            "jobs",
            "app",
            "config",
        ],
    ),
];

fn rust_files(path: &Path, found: &mut Vec<std::path::PathBuf>) {
    if path.is_file() {
        found.push(path.to_owned());
        return;
    }
    for entry in std::fs::read_dir(path)
        .expect("readable source directory")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn imports_flow_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut violations = Vec::new();
    for (module, forbidden) in FORBIDDEN {
        let mut files = Vec::new();
        rust_files(&root.join(module), &mut files);
        assert!(!files.is_empty(), "{module} has no sources");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for target in *forbidden {
                let path = format!("crate::{target}::");
                let path_use = format!("crate::{target}::{{");
                let bare = format!("crate::{target};");
                if text.contains(&path) || text.contains(&path_use) || text.contains(&bare) {
                    violations.push(format!("{} imports {target}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}
