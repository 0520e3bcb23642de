//! Shared set-up for in-process vault tests: a vault on a temp dir with a manual clock.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use store::{LocalDir, ObjectKind, ObjectName, ObjectStore, Timestamp};
use vault::clock::ManualClock;
use vault::config::{Config, KeyholderFile};
use vault::{VaultHandle, serve};
use vault_api::{Scope, SignRequest, VaultClient};

/// The instant every test's clock starts at.
pub const T0: Timestamp = Timestamp(1_800_000_000);

/// A running in-process vault.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub handle: Option<VaultHandle>,
    pub clock: Arc<ManualClock>,
    pub admin: VaultClient,
    /// The admin token's text, for clients of a restarted vault.
    pub admin_token: String,
    pub config: Config,
    pub keys: Vec<SigningKey>,
}

/// Options for [`start`].
pub struct Opts {
    pub keyholders: usize,
    pub threshold: usize,
    pub wait_hours: u64,
    pub retention_days: u32,
    pub alert_command: Option<Vec<String>>,
    pub limits: Option<vault::config::Limits>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            keyholders: 3,
            threshold: 2,
            wait_hours: 72,
            retention_days: 30,
            alert_command: None,
            limits: None,
        }
    }
}

pub async fn start(opts: Opts) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let keys: Vec<SigningKey> =
        (0..opts.keyholders).map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32])).collect();
    let keyholders = keys
        .iter()
        .enumerate()
        .map(|(i, k)| KeyholderFile {
            name: format!("keyholder{i}"),
            public_key: hex::encode(k.verifying_key().as_bytes()),
        })
        .collect();
    let escrow = age::x25519::Identity::generate().to_public();
    let init = vault::init(
        vault::InitOptions {
            dir: dir.path().join("vault"),
            listen: "127.0.0.1:0".into(),
            escrow: vec![escrow],
            keyholders,
            threshold: opts.threshold,
            retention_days: opts.retention_days,
            wait_hours: opts.wait_hours,
            testing_allow_short_wait: false,
            clusters: Vec::new(),
        },
        clock.as_ref(),
    )
    .await
    .unwrap();
    let mut config = Config::load(&init.config_path).unwrap();
    config.alert_command = opts.alert_command;
    if let Some(l) = opts.limits {
        config.limits = l;
    }
    let handle = serve(config.clone(), clock.clone()).await.unwrap();
    let ca = std::fs::read(&init.ca_path).unwrap();
    let admin = VaultClient::new(&format!("https://{}", handle.addr()), &ca, Some(init.admin_token.expose()))
        .unwrap();
    Harness { dir, handle: Some(handle), clock, admin, admin_token: init.admin_token.expose(), config, keys }
}

impl Harness {
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("vault/store")
    }

    pub fn store(&self) -> LocalDir {
        LocalDir::open(self.store_dir()).unwrap()
    }

    /// Every object: name, size, retention. Compared before and after each attack.
    pub async fn listing(&self) -> Vec<(ObjectName, u64, Timestamp)> {
        let s = self.store();
        let mut out = Vec::new();
        for k in ObjectKind::ALL {
            for m in s.list(k).await.unwrap() {
                out.push((m.name, m.size, m.retain_until));
            }
        }
        out.sort();
        out
    }

    /// A client holding a new token of `scope`.
    pub async fn client(&self, scope: Scope) -> VaultClient {
        let t = self.admin.create_token(scope, &format!("test {scope}")).await.unwrap();
        self.admin.with_token(Some(t.token))
    }

    /// A well-formed pack of this vault's repository holding `plain` as one blob, sealed with
    /// the repository's keys (opened here with the vault key, as only the vault host can).
    pub async fn pack(&self, plain: &[u8]) -> store::pack::FinishedPack {
        let (repo, _) = vault::open_repository(&self.config, None).await.unwrap();
        let keys = repo.keys();
        let mut p = store::pack::Packer::new(1 << 20);
        let sealed = keys.seal(plain, 3).unwrap();
        p.add(keys.chunk_id(plain), store::pack::BlobType::Data, &sealed, plain.len() as u64);
        p.finish(keys, 3).unwrap()
    }

    /// Uploads a well-formed pack holding `plain` with an append client and returns its name.
    pub async fn upload(&self, append: &VaultClient, plain: &[u8]) -> ObjectName {
        let pack = self.pack(plain).await;
        append.put_object(&pack.name, pack.bytes).await.unwrap();
        pack.name
    }

    /// Keyholder `i`'s signature over proposal `id`'s statement.
    pub async fn signature(&self, i: usize, id: &str) -> SignRequest {
        let view = self.admin.proposal(id).await.unwrap();
        let bytes = view.statement.canonical_bytes();
        assert_eq!(hex::encode(&bytes), view.canonical_hex);
        SignRequest {
            public_key: hex::encode(self.keys[i].verifying_key().as_bytes()),
            signature: hex::encode(self.keys[i].sign(&bytes).to_bytes()),
        }
    }

    pub fn veto(&self, i: usize, id: &str) -> SignRequest {
        SignRequest {
            public_key: hex::encode(self.keys[i].verifying_key().as_bytes()),
            signature: hex::encode(self.keys[i].sign(&vault_api::veto_message(id)).to_bytes()),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.handle.as_ref().unwrap().addr())
    }
}

/// `holdfast_vault_alerts_total` as `/metrics` shows it.
pub async fn alerts_total(c: &VaultClient) -> u64 {
    let m = c.metrics().await.unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("holdfast_vault_alerts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no alerts counter in {m}"))
}

/// The HTTP status of a failed call (panics if it succeeded).
pub fn status<T: std::fmt::Debug>(r: Result<T, vault_api::ClientError>) -> u16 {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.status().unwrap_or_else(|| panic!("expected an HTTP refusal, got {e}")),
    }
}

/// `vault init` options for a vault of its own (one keyholder, alice; 7 days' retention), in
/// `dir`: the S3 tests initialise it on a bucket.
pub fn init_options(dir: &std::path::Path) -> vault::InitOptions {
    vault::InitOptions {
        dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        escrow: vec![age::x25519::Identity::generate().to_public()],
        keyholders: vec![vault::config::KeyholderFile {
            name: "alice".into(),
            public_key: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a".into(),
        }],
        threshold: 1,
        retention_days: 7,
        wait_hours: 72,
        testing_allow_short_wait: false,
        clusters: Vec::new(),
    }
}
