//! Status types live in `vault-api`, the wire contract; the collector fills them in.

pub use vault_api::status::{
    BackupSummary, ClusterStatus, Incident, IncidentObject, IncidentTarget, Inventory, InventoryBackup,
    WalRun, Window,
};
