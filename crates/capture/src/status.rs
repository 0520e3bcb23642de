//! Status types live in `vault-api`, the wire contract; the collector fills them in.

pub use vault_api::status::{
    BackupSummary, ClusterStatus, Incident, IncidentObject, IncidentTarget, IncidentTenant, Inventory,
    InventoryBackup, WalRun, Window,
};
