//! The physical replication sub-protocol: commands, their results, and the messages carried
//! inside CopyData while streaming (XLogData, keepalive, standby status update).

use bytes::Bytes;
use pgfmt::{Lsn, TimelineId};

use crate::Error;
use crate::message::{BackendMessage, FieldDescription};

/// Microseconds since 2000-01-01 UTC, PostgreSQL's timestamp form on the wire.
pub type PgTimestamp = i64;

/// Microseconds from the Unix epoch to 2000-01-01 UTC.
pub const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800 * 1_000_000;

/// The current time as a [`PgTimestamp`].
pub fn pg_now() -> PgTimestamp {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - POSTGRES_EPOCH_UNIX_MICROS
}

/// A message the server sends inside CopyData while streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// 'w': WAL bytes.
    XLogData(XLogData),
    /// 'k': the server's position; may ask for a reply.
    PrimaryKeepalive(PrimaryKeepalive),
}

/// 'w': a run of WAL starting at `wal_start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XLogData {
    /// The position of `data[0]`.
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// The server's clock when sending.
    pub send_time: PgTimestamp,
    /// The WAL bytes.
    pub data: Bytes,
}

/// 'k': a keepalive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// The server's clock when sending.
    pub send_time: PgTimestamp,
    /// The server wants a status update now (or it will time out the connection).
    pub reply_requested: bool,
}

/// 'r': what the client has written, flushed and applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL byte + 1 received and written.
    pub write: Lsn,
    /// Last WAL byte + 1 durably stored (the slot advances to this).
    pub flush: Lsn,
    /// Last WAL byte + 1 applied (a vault applies nothing: use `flush`).
    pub apply: Lsn,
    /// The client's clock.
    pub client_time: PgTimestamp,
    /// Ask the server to reply with a keepalive at once.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// The CopyData payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(34);
        v.push(b'r');
        v.extend_from_slice(&self.write.0.to_be_bytes());
        v.extend_from_slice(&self.flush.0.to_be_bytes());
        v.extend_from_slice(&self.apply.0.to_be_bytes());
        v.extend_from_slice(&self.client_time.to_be_bytes());
        v.push(u8::from(self.reply_requested));
        v
    }
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
}

impl ReplicationMessage {
    /// Parses a CopyData payload received while streaming.
    pub fn parse(payload: &Bytes) -> Result<ReplicationMessage, Error> {
        let bad = |what: &str| Error::Protocol(format!("malformed {what} message"));
        match payload.first() {
            Some(b'w') => {
                let start = be_u64(payload, 1).ok_or_else(|| bad("XLogData"))?;
                let end = be_u64(payload, 9).ok_or_else(|| bad("XLogData"))?;
                let time = be_u64(payload, 17).ok_or_else(|| bad("XLogData"))?;
                Ok(ReplicationMessage::XLogData(XLogData {
                    wal_start: Lsn(start),
                    wal_end: Lsn(end),
                    send_time: time as i64,
                    data: payload.slice(25..),
                }))
            }
            Some(b'k') => {
                let end = be_u64(payload, 1).ok_or_else(|| bad("keepalive"))?;
                let time = be_u64(payload, 9).ok_or_else(|| bad("keepalive"))?;
                let reply = *payload.get(17).ok_or_else(|| bad("keepalive"))?;
                Ok(ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                    wal_end: Lsn(end),
                    send_time: time as i64,
                    reply_requested: reply != 0,
                }))
            }
            Some(&t) => Err(Error::Protocol(format!("unknown replication message type {:?}", t as char))),
            None => Err(bad("empty replication")),
        }
    }
}

/// Quotes a string literal for the replication grammar (`'it''s'`); NUL is refused.
pub fn quote_literal(s: &str) -> Result<String, Error> {
    if s.contains('\0') {
        return Err(Error::InvalidArgument("a string sent to PostgreSQL cannot contain NUL".into()));
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

/// Checks a slot name the way PostgreSQL does (`ReplicationSlotValidateName`): 1–63 of
/// lowercase letters, digits and underscores; returns it double-quoted.
pub fn quote_slot_name(name: &str) -> Result<String, Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "invalid replication slot name {name:?}: use 1 to 63 lowercase letters, digits and underscores"
        )));
    }
    Ok(format!("\"{name}\""))
}

/// The oldest server this crate speaks to (`server_version_num`).
pub const MIN_SERVER_VERSION_NUM: u32 = 140_000;

/// Replication command builders. `version` is the server's `server_version_num`.
pub mod commands {
    use super::*;

    /// `IDENTIFY_SYSTEM`.
    pub fn identify_system() -> String {
        "IDENTIFY_SYSTEM".into()
    }

    /// `TIMELINE_HISTORY n`.
    pub fn timeline_history(tli: TimelineId) -> String {
        format!("TIMELINE_HISTORY {}", tli.0)
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL [RESERVE_WAL]`, in the option
    /// syntax of the server's version (parenthesised from PostgreSQL 15 on).
    pub fn create_physical_slot(
        name: &str,
        temporary: bool,
        reserve_wal: bool,
        version: u32,
    ) -> Result<String, Error> {
        let mut s = format!("CREATE_REPLICATION_SLOT {}", quote_slot_name(name)?);
        if temporary {
            s.push_str(" TEMPORARY");
        }
        s.push_str(" PHYSICAL");
        if reserve_wal {
            s.push_str(if version >= 150_000 { " (RESERVE_WAL)" } else { " RESERVE_WAL" });
        }
        Ok(s)
    }

    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15+).
    pub fn read_replication_slot(name: &str, version: u32) -> Result<String, Error> {
        if version < 150_000 {
            return Err(Error::InvalidArgument("READ_REPLICATION_SLOT needs PostgreSQL 15 or later".into()));
        }
        Ok(format!("READ_REPLICATION_SLOT {}", quote_slot_name(name)?))
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]`.
    pub fn drop_replication_slot(name: &str, wait: bool) -> Result<String, Error> {
        let mut s = format!("DROP_REPLICATION_SLOT {}", quote_slot_name(name)?);
        if wait {
            s.push_str(" WAIT");
        }
        Ok(s)
    }

    /// `START_REPLICATION [SLOT name] PHYSICAL X/Y [TIMELINE n]`.
    pub fn start_replication(
        slot: Option<&str>,
        start: Lsn,
        timeline: Option<TimelineId>,
    ) -> Result<String, Error> {
        let mut s = String::from("START_REPLICATION");
        if let Some(slot) = slot {
            s.push_str(" SLOT ");
            s.push_str(&quote_slot_name(slot)?);
        }
        s.push_str(&format!(" PHYSICAL {start}"));
        if let Some(t) = timeline {
            s.push_str(&format!(" TIMELINE {}", t.0));
        }
        Ok(s)
    }

    /// Options of `BASE_BACKUP`.
    #[derive(Clone, Debug)]
    pub struct BaseBackupOptions {
        /// `LABEL`.
        pub label: String,
        /// `CHECKPOINT 'fast'` (else spread).
        pub fast_checkpoint: bool,
        /// `MANIFEST 'yes'`.
        pub manifest: bool,
        /// `MANIFEST_CHECKSUMS`, e.g. `CRC32C` (the server default when `None`).
        pub manifest_checksums: Option<String>,
        /// `WAL`: include the needed WAL in the archive (holdfast streams it instead).
        pub wal: bool,
        /// `PROGRESS`: have the server compute sizes first.
        pub progress: bool,
        /// `WAIT`: wait for the WAL to be archived (false is `NOWAIT`).
        pub wait: bool,
        /// `MAX_RATE` in kB/s.
        pub max_rate: Option<u32>,
        /// `TABLESPACE_MAP`.
        pub tablespace_map: bool,
    }

    impl Default for BaseBackupOptions {
        fn default() -> Self {
            BaseBackupOptions {
                label: "holdfast base backup".into(),
                fast_checkpoint: true,
                manifest: true,
                manifest_checksums: None,
                wal: false,
                progress: false,
                wait: false,
                max_rate: None,
                tablespace_map: true,
            }
        }
    }

    /// `BASE_BACKUP …`: the parenthesised option list with `TARGET 'client'` from
    /// PostgreSQL 15 on (the new copy-stream protocol), the legacy form for 14.
    pub fn base_backup(o: &BaseBackupOptions, version: u32) -> Result<String, Error> {
        let label = quote_literal(&o.label)?;
        if let Some(c) = &o.manifest_checksums
            && !c.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(Error::InvalidArgument(format!("invalid manifest checksum algorithm {c:?}")));
        }
        if version >= 150_000 {
            let mut opts = vec![format!("LABEL {label}")];
            if o.progress {
                opts.push("PROGRESS".into());
            }
            opts.push(format!("CHECKPOINT '{}'", if o.fast_checkpoint { "fast" } else { "spread" }));
            opts.push(format!("WAL {}", o.wal));
            opts.push(format!("WAIT {}", o.wait));
            if let Some(r) = o.max_rate {
                opts.push(format!("MAX_RATE {r}"));
            }
            if o.tablespace_map {
                opts.push("TABLESPACE_MAP".into());
            }
            opts.push(format!("MANIFEST '{}'", if o.manifest { "yes" } else { "no" }));
            if let Some(c) = &o.manifest_checksums {
                opts.push(format!("MANIFEST_CHECKSUMS '{c}'"));
            }
            opts.push("TARGET 'client'".into());
            Ok(format!("BASE_BACKUP ({})", opts.join(", ")))
        } else {
            let mut s = format!("BASE_BACKUP LABEL {label}");
            if o.progress {
                s.push_str(" PROGRESS");
            }
            if o.fast_checkpoint {
                s.push_str(" FAST");
            }
            if o.wal {
                s.push_str(" WAL");
            }
            if !o.wait {
                s.push_str(" NOWAIT");
            }
            if let Some(r) = o.max_rate {
                s.push_str(&format!(" MAX_RATE {r}"));
            }
            if o.tablespace_map {
                s.push_str(" TABLESPACE_MAP");
            }
            if o.manifest {
                s.push_str(" MANIFEST 'yes'");
            }
            if let Some(c) = &o.manifest_checksums {
                s.push_str(&format!(" MANIFEST_CHECKSUMS '{c}'"));
            }
            Ok(s)
        }
    }
}

/// One result set of a simple query: columns, rows and the command tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    /// The columns (empty for commands that return no rows).
    pub columns: Vec<FieldDescription>,
    /// The rows; `None` is NULL.
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// The CommandComplete tag.
    pub tag: String,
}

impl ResultSet {
    /// Collects result sets from the messages of one simple query (up to ReadyForQuery).
    pub fn collect(messages: &[BackendMessage]) -> Vec<ResultSet> {
        let mut sets = Vec::new();
        let mut cur = ResultSet::default();
        for m in messages {
            match m {
                BackendMessage::RowDescription(cols) => cur.columns = cols.clone(),
                BackendMessage::DataRow(row) => cur.rows.push(row.clone()),
                BackendMessage::CommandComplete(tag) => {
                    cur.tag = tag.clone();
                    sets.push(std::mem::take(&mut cur));
                }
                _ => {}
            }
        }
        if !cur.columns.is_empty() || !cur.rows.is_empty() {
            sets.push(cur);
        }
        sets
    }

    /// The text of column `name` in row `row`, `None` for NULL or no such column.
    pub fn get(&self, row: usize, name: &str) -> Option<&str> {
        let col = self.columns.iter().position(|c| c.name == name)?;
        let v = self.rows.get(row)?.get(col)?.as_ref()?;
        std::str::from_utf8(v).ok()
    }

    fn required(&self, row: usize, name: &str, what: &str) -> Result<&str, Error> {
        self.get(row, name)
            .ok_or_else(|| Error::Protocol(format!("{what} result has no {name:?} value in row {row}")))
    }
}

fn parse_field<T: std::str::FromStr>(v: &str, name: &str) -> Result<T, Error> {
    v.parse().map_err(|_| Error::Protocol(format!("unexpected {name} value {v:?}")))
}

/// The result of `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifySystem {
    /// The cluster's system identifier (as in `pg_controldata`).
    pub system_id: u64,
    /// The current timeline.
    pub timeline: TimelineId,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database, for logical replication connections.
    pub dbname: Option<String>,
}

impl IdentifySystem {
    /// Parses the single-row result.
    pub fn from_result(r: &ResultSet) -> Result<Self, Error> {
        let w = "IDENTIFY_SYSTEM";
        Ok(IdentifySystem {
            system_id: parse_field(r.required(0, "systemid", w)?, "systemid")?,
            timeline: TimelineId(parse_field(r.required(0, "timeline", w)?, "timeline")?),
            xlogpos: parse_field(r.required(0, "xlogpos", w)?, "xlogpos")?,
            dbname: r.get(0, "dbname").map(str::to_owned),
        })
    }
}

/// The result of `TIMELINE_HISTORY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistoryFile {
    /// The file name, e.g. `00000002.history`.
    pub filename: String,
    /// The raw content.
    pub content: Bytes,
}

impl TimelineHistoryFile {
    /// Parses the single-row result.
    pub fn from_result(r: &ResultSet) -> Result<Self, Error> {
        let col = |name: &str| -> Result<Bytes, Error> {
            let i = r
                .columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| Error::Protocol(format!("TIMELINE_HISTORY has no {name}")))?;
            r.rows
                .first()
                .and_then(|row| row.get(i).cloned().flatten())
                .ok_or_else(|| Error::Protocol(format!("TIMELINE_HISTORY has no {name} value")))
        };
        Ok(TimelineHistoryFile {
            filename: String::from_utf8_lossy(&col("filename")?).into_owned(),
            content: col("content")?,
        })
    }

    /// The parsed history.
    pub fn history(&self) -> Result<pgfmt::TimelineHistory, Error> {
        pgfmt::TimelineHistory::parse(&String::from_utf8_lossy(&self.content))
            .map_err(|e| Error::Protocol(e.to_string()))
    }
}

/// The result of `CREATE_REPLICATION_SLOT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot name.
    pub slot_name: String,
    /// `consistent_point`; PostgreSQL reports `0/0` for physical slots.
    pub consistent_point: Option<Lsn>,
}

impl CreatedSlot {
    /// Parses the single-row result.
    pub fn from_result(r: &ResultSet) -> Result<Self, Error> {
        let w = "CREATE_REPLICATION_SLOT";
        Ok(CreatedSlot {
            slot_name: r.required(0, "slot_name", w)?.to_owned(),
            consistent_point: r
                .get(0, "consistent_point")
                .map(|v| parse_field(v, "consistent_point"))
                .transpose()?,
        })
    }
}

/// The result of `READ_REPLICATION_SLOT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// `physical` or `logical`.
    pub slot_type: String,
    /// The oldest WAL position the slot retains, if it has reserved WAL.
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`.
    pub restart_tli: Option<TimelineId>,
}

impl SlotInfo {
    /// Parses the result; `None` when the slot does not exist (all columns NULL).
    pub fn from_result(r: &ResultSet) -> Result<Option<Self>, Error> {
        let Some(slot_type) = r.get(0, "slot_type") else {
            return Ok(None);
        };
        Ok(Some(SlotInfo {
            slot_type: slot_type.to_owned(),
            restart_lsn: r.get(0, "restart_lsn").map(|v| parse_field(v, "restart_lsn")).transpose()?,
            restart_tli: r
                .get(0, "restart_tli")
                .map(|v| parse_field(v, "restart_tli").map(TimelineId))
                .transpose()?,
        }))
    }
}

/// A WAL position with its timeline (the `recptr`/`tli` result of BASE_BACKUP, or the
/// next-timeline result after streaming ends at a timeline switch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LsnTimeline {
    /// The position.
    pub lsn: Lsn,
    /// The timeline.
    pub timeline: TimelineId,
}

impl LsnTimeline {
    /// Parses BASE_BACKUP's `recptr`/`tli` result.
    pub fn from_backup_result(r: &ResultSet) -> Result<Self, Error> {
        let w = "BASE_BACKUP";
        Ok(LsnTimeline {
            lsn: parse_field(r.required(0, "recptr", w)?, "recptr")?,
            timeline: TimelineId(parse_field(r.required(0, "tli", w)?, "tli")?),
        })
    }

    /// Parses the `next_tli`/`next_tli_startpos` result sent when streaming reaches the end of
    /// a timeline.
    pub fn from_next_timeline_result(r: &ResultSet) -> Result<Self, Error> {
        let w = "START_REPLICATION";
        Ok(LsnTimeline {
            lsn: parse_field(r.required(0, "next_tli_startpos", w)?, "next_tli_startpos")?,
            timeline: TimelineId(parse_field(r.required(0, "next_tli", w)?, "next_tli")?),
        })
    }
}

/// A tablespace row of BASE_BACKUP's second result set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceInfo {
    /// The tablespace OID (`None` for the main data directory).
    pub oid: Option<u32>,
    /// Its location on the server (`None` for the main data directory).
    pub location: Option<String>,
    /// Its size in kB, when PROGRESS was asked for.
    pub size_kb: Option<u64>,
}

impl TablespaceInfo {
    /// Parses every row.
    pub fn from_result(r: &ResultSet) -> Result<Vec<Self>, Error> {
        (0..r.rows.len())
            .map(|i| {
                Ok(TablespaceInfo {
                    oid: r.get(i, "spcoid").map(|v| parse_field(v, "spcoid")).transpose()?,
                    location: r.get(i, "spclocation").map(str::to_owned),
                    size_kb: r.get(i, "size").map(|v| parse_field(v, "size")).transpose()?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::commands::*;
    use super::*;

    #[test]
    fn builds_commands() {
        assert_eq!(
            create_physical_slot("s1", false, true, 150_004).unwrap(),
            "CREATE_REPLICATION_SLOT \"s1\" PHYSICAL (RESERVE_WAL)"
        );
        assert_eq!(
            create_physical_slot("s1", true, true, 140_010).unwrap(),
            "CREATE_REPLICATION_SLOT \"s1\" TEMPORARY PHYSICAL RESERVE_WAL"
        );
        assert!(create_physical_slot("Bad-Name", false, true, 150_000).is_err());
        assert!(create_physical_slot("x\"; DROP", false, true, 150_000).is_err());
        assert_eq!(
            start_replication(Some("s1"), Lsn(0x16_B374_D848), Some(TimelineId(3))).unwrap(),
            "START_REPLICATION SLOT \"s1\" PHYSICAL 16/B374D848 TIMELINE 3"
        );
        assert_eq!(start_replication(None, Lsn(0), None).unwrap(), "START_REPLICATION PHYSICAL 0/0");
        assert_eq!(timeline_history(TimelineId(2)), "TIMELINE_HISTORY 2");
        assert!(read_replication_slot("s", 140_000).is_err());
        assert_eq!(read_replication_slot("s", 170_000).unwrap(), "READ_REPLICATION_SLOT \"s\"");
        let o = BaseBackupOptions { label: "it's".into(), ..Default::default() };
        assert_eq!(
            base_backup(&o, 150_000).unwrap(),
            "BASE_BACKUP (LABEL 'it''s', CHECKPOINT 'fast', WAL false, WAIT false, TABLESPACE_MAP, MANIFEST 'yes', TARGET 'client')"
        );
        assert_eq!(
            base_backup(&o, 140_000).unwrap(),
            "BASE_BACKUP LABEL 'it''s' FAST NOWAIT TABLESPACE_MAP MANIFEST 'yes'"
        );
        let nul = BaseBackupOptions { label: "a\0b".into(), ..Default::default() };
        assert!(base_backup(&nul, 150_000).is_err());
    }

    #[test]
    fn status_update_and_messages() {
        let s = StandbyStatusUpdate {
            write: Lsn(1),
            flush: Lsn(2),
            apply: Lsn(3),
            client_time: 4,
            reply_requested: true,
        };
        let b = s.encode();
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &1u64.to_be_bytes());
        assert_eq!(b[33], 1);

        let mut w = vec![b'w'];
        w.extend_from_slice(&0x100u64.to_be_bytes());
        w.extend_from_slice(&0x200u64.to_be_bytes());
        w.extend_from_slice(&7i64.to_be_bytes());
        w.extend_from_slice(b"wal!");
        let ReplicationMessage::XLogData(x) = ReplicationMessage::parse(&Bytes::from(w)).unwrap() else {
            panic!()
        };
        assert_eq!((x.wal_start, x.wal_end, x.send_time), (Lsn(0x100), Lsn(0x200), 7));
        assert_eq!(&x.data[..], b"wal!");

        let mut k = vec![b'k'];
        k.extend_from_slice(&0x300u64.to_be_bytes());
        k.extend_from_slice(&9i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            ReplicationMessage::parse(&Bytes::from(k)).unwrap(),
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(0x300),
                send_time: 9,
                reply_requested: true
            })
        );
        assert!(ReplicationMessage::parse(&Bytes::from_static(b"k\0")).is_err());
        assert!(ReplicationMessage::parse(&Bytes::from_static(b"")).is_err());
        assert!(ReplicationMessage::parse(&Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn parses_identify_system() {
        let field = |name: &str| FieldDescription { name: name.into(), type_oid: 25, format: 0 };
        let msgs = vec![
            BackendMessage::RowDescription(vec![
                field("systemid"),
                field("timeline"),
                field("xlogpos"),
                field("dbname"),
            ]),
            BackendMessage::DataRow(vec![
                Some(Bytes::from_static(b"7301234567890123456")),
                Some(Bytes::from_static(b"1")),
                Some(Bytes::from_static(b"0/1701E28")),
                None,
            ]),
            BackendMessage::CommandComplete("IDENTIFY_SYSTEM".into()),
        ];
        let sets = ResultSet::collect(&msgs);
        let id = IdentifySystem::from_result(&sets[0]).unwrap();
        assert_eq!(id.system_id, 7_301_234_567_890_123_456);
        assert_eq!(id.timeline, TimelineId(1));
        assert_eq!(id.xlogpos, Lsn(0x170_1E28));
        assert_eq!(id.dbname, None);
        assert!(IdentifySystem::from_result(&ResultSet::default()).is_err());
    }
}
