//! The project's own registry and test images (hack/testenv), started once
//! per test binary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Addresses and digests of the test registries.
#[derive(Debug)]
pub struct TestEnv {
    /// host:port of the plain registry.
    pub registry: String,
    /// host:port of the registry behind basic auth (crius / crius-test).
    pub auth_registry: String,
    /// images.json: reference → {digest, config, platforms}.
    pub images: serde_json::Value,
}

impl TestEnv {
    /// Full reference of a test image on the plain registry: `crius/<name>`.
    pub fn image(&self, name_tag: &str) -> String {
        format!("{}/crius/{name_tag}", self.registry)
    }

    /// The registries.conf that marks both test registries insecure (http).
    pub fn registries_conf(&self) -> String {
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\n\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
            self.registry, self.auth_registry
        )
    }

    /// Config digest (= image id) of a pushed reference.
    pub fn config_digest(&self, reference: &str) -> String {
        self.images[reference]["config"]
            .as_str()
            .unwrap_or_else(|| panic!("no config digest for {reference} in images.json"))
            .to_string()
    }

    /// Manifest (or index) digest of a pushed reference.
    pub fn digest(&self, reference: &str) -> String {
        self.images[reference]["digest"]
            .as_str()
            .unwrap_or_else(|| panic!("no digest for {reference} in images.json"))
            .to_string()
    }
}

/// Starts the registries and pushes the images (idempotent, shared by all
/// tests of a binary).
pub fn testenv() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(repo.join("hack/testenv/up.sh"))
            .output()
            .expect("run hack/testenv/up.sh");
        assert!(
            out.status.success(),
            "hack/testenv/up.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(
            std::env::var("CRIUS_TESTENV_DIR").unwrap_or_else(|_| "/var/lib/crius-testenv".into()),
        );
        let env_text = std::fs::read_to_string(dir.join("env")).expect("testenv env file");
        let vars: HashMap<&str, &str> = env_text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        let images = std::fs::read_to_string(dir.join("images.json")).expect("images.json");
        TestEnv {
            registry: vars["CRIUS_TEST_REGISTRY"].to_string(),
            auth_registry: vars["CRIUS_TEST_AUTH_REGISTRY"].to_string(),
            images: serde_json::from_str(&images).expect("images.json is JSON"),
        }
    })
}
