//! The response to `BASE_BACKUP`, as a sans-IO state machine: feed backend messages, get
//! archive names, archive chunks, progress, manifest chunks and the end position out.
//!
//! PostgreSQL 15+ (`TARGET 'client'`) sends one COPY OUT stream whose CopyData payloads start
//! with a type byte: `n` new archive (name, tablespace location), `d` data, `p` progress
//! (int64), `m` manifest follows. PostgreSQL 14 sends one COPY OUT per tablespace tar and one
//! for the manifest (`basebackup_copy.c`).

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use crate::Error;
use crate::message::BackendMessage;
use crate::replication::{LsnTimeline, ResultSet, TablespaceInfo};

/// Something the base backup stream produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupEvent {
    /// The backup started: its start position and the tablespaces to come.
    Started {
        /// The redo position the backup starts from.
        start: LsnTimeline,
        /// One row per tablespace; the main data directory has no OID.
        tablespaces: Vec<TablespaceInfo>,
    },
    /// A new archive (a tar file) begins.
    ArchiveStart {
        /// The archive's name, e.g. `base.tar` or `16385.tar`.
        name: String,
        /// The tablespace's location on the server (`None` for the main directory).
        location: Option<String>,
    },
    /// A chunk of the current archive.
    ArchiveData(Bytes),
    /// Bytes done so far (PostgreSQL 15+).
    Progress(u64),
    /// The backup manifest follows.
    ManifestStart,
    /// A chunk of the manifest.
    ManifestData(Bytes),
    /// The backup ended; the WAL up to this position is needed for consistency.
    Finished(LsnTimeline),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Copy,
    BetweenCopies,
    Trailer,
    Done,
}

/// Turns the messages answering `BASE_BACKUP` into [`BackupEvent`]s.
#[derive(Debug)]
pub struct BaseBackupStream {
    legacy: bool,
    state: State,
    pending: Vec<BackendMessage>,
    header_sets: Vec<ResultSet>,
    tablespaces: Vec<TablespaceInfo>,
    copies_seen: usize,
    in_manifest: bool,
    end: Option<LsnTimeline>,
    events: VecDeque<BackupEvent>,
}

impl BaseBackupStream {
    /// A stream for a server of `server_version_num` `version`.
    pub fn new(version: u32) -> Self {
        BaseBackupStream {
            legacy: version < 150_000,
            state: State::Header,
            pending: Vec::new(),
            header_sets: Vec::new(),
            tablespaces: Vec::new(),
            copies_seen: 0,
            in_manifest: false,
            end: None,
            events: VecDeque::new(),
        }
    }

    /// Whether ReadyForQuery arrived after a complete backup.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next event produced so far.
    pub fn next_event(&mut self) -> Option<BackupEvent> {
        self.events.pop_front()
    }

    /// Feeds one backend message.
    pub fn on_message(&mut self, msg: BackendMessage) -> Result<(), Error> {
        let unexpected = |state: State, msg: &BackendMessage| {
            Error::Protocol(format!("unexpected {} in BASE_BACKUP response ({state:?})", msg.name()))
        };
        match (self.state, msg) {
            (_, BackendMessage::ErrorResponse(e)) => Err(Error::Server(e)),
            (_, BackendMessage::NoticeResponse(_) | BackendMessage::ParameterStatus { .. }) => Ok(()),
            (
                State::Header | State::Trailer,
                m @ (BackendMessage::RowDescription(_) | BackendMessage::DataRow(_)),
            ) => {
                self.pending.push(m);
                Ok(())
            }
            (State::Header, m @ BackendMessage::CommandComplete(_)) => {
                self.pending.push(m);
                self.header_sets.extend(ResultSet::collect(&self.pending));
                self.pending.clear();
                Ok(())
            }
            (State::Header | State::BetweenCopies, BackendMessage::CopyOutResponse(_)) => {
                if self.state == State::Header {
                    self.finish_header()?;
                }
                self.state = State::Copy;
                if self.legacy {
                    // One COPY per tablespace, then one for the manifest.
                    let i = self.copies_seen;
                    self.copies_seen += 1;
                    if let Some(ts) = self.tablespaces.get(i) {
                        let name = ts.oid.map_or_else(|| "base.tar".to_owned(), |oid| format!("{oid}.tar"));
                        self.events
                            .push_back(BackupEvent::ArchiveStart { name, location: ts.location.clone() });
                    } else {
                        self.in_manifest = true;
                        self.events.push_back(BackupEvent::ManifestStart);
                    }
                }
                Ok(())
            }
            (State::Copy, BackendMessage::CopyData(data)) => {
                if self.legacy {
                    self.events.push_back(if self.in_manifest {
                        BackupEvent::ManifestData(data)
                    } else {
                        BackupEvent::ArchiveData(data)
                    });
                    return Ok(());
                }
                self.on_copy_payload(data)
            }
            (State::Copy, BackendMessage::CopyDone) => {
                self.state = if self.legacy { State::BetweenCopies } else { State::Trailer };
                Ok(())
            }
            (State::BetweenCopies, m @ (BackendMessage::RowDescription(_) | BackendMessage::DataRow(_))) => {
                self.state = State::Trailer;
                self.pending.push(m);
                Ok(())
            }
            (State::Trailer, m @ BackendMessage::CommandComplete(_)) => {
                self.pending.push(m);
                let sets = ResultSet::collect(&self.pending);
                self.pending.clear();
                if self.end.is_none()
                    && let Some(set) = sets.first()
                {
                    let end = LsnTimeline::from_backup_result(set)?;
                    self.end = Some(end);
                    self.events.push_back(BackupEvent::Finished(end));
                }
                Ok(())
            }
            (State::Trailer, BackendMessage::ReadyForQuery(_)) => {
                if self.end.is_none() {
                    return Err(Error::Protocol("BASE_BACKUP ended without an end position".into()));
                }
                self.state = State::Done;
                Ok(())
            }
            (state, m) => Err(unexpected(state, &m)),
        }
    }

    fn finish_header(&mut self) -> Result<(), Error> {
        let [start, tablespaces] = self.header_sets.as_slice() else {
            return Err(Error::Protocol(format!(
                "BASE_BACKUP sent {} result sets before the data, expected 2",
                self.header_sets.len()
            )));
        };
        let start = LsnTimeline::from_backup_result(start)?;
        self.tablespaces = TablespaceInfo::from_result(tablespaces)?;
        self.events.push_back(BackupEvent::Started { start, tablespaces: self.tablespaces.clone() });
        Ok(())
    }

    fn on_copy_payload(&mut self, mut data: Bytes) -> Result<(), Error> {
        let Some(&kind) = data.first() else {
            return Err(Error::Protocol("empty CopyData in BASE_BACKUP".into()));
        };
        data.advance(1);
        match kind {
            b'n' => {
                let mut parts = data.split(|&b| b == 0);
                let name = parts.next().unwrap_or_default();
                let location = parts
                    .next()
                    .ok_or_else(|| Error::Protocol("malformed new-archive message in BASE_BACKUP".into()))?;
                self.in_manifest = false;
                self.events.push_back(BackupEvent::ArchiveStart {
                    name: String::from_utf8_lossy(name).into_owned(),
                    location: (!location.is_empty()).then(|| String::from_utf8_lossy(location).into_owned()),
                });
            }
            b'd' => self.events.push_back(if self.in_manifest {
                BackupEvent::ManifestData(data)
            } else {
                BackupEvent::ArchiveData(data)
            }),
            b'p' => {
                let b: [u8; 8] = data
                    .as_ref()
                    .try_into()
                    .map_err(|_| Error::Protocol("malformed progress message in BASE_BACKUP".into()))?;
                self.events.push_back(BackupEvent::Progress(u64::from_be_bytes(b)));
            }
            b'm' => {
                self.in_manifest = true;
                self.events.push_back(BackupEvent::ManifestStart);
            }
            other => {
                return Err(Error::Protocol(format!("unknown BASE_BACKUP message type {:?}", other as char)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{CopyFormat, FieldDescription};

    fn cols(names: &[&str]) -> BackendMessage {
        BackendMessage::RowDescription(
            names.iter().map(|n| FieldDescription { name: (*n).into(), type_oid: 25, format: 0 }).collect(),
        )
    }

    fn row(vals: &[Option<&str>]) -> BackendMessage {
        BackendMessage::DataRow(
            vals.iter().map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes()))).collect(),
        )
    }

    fn header() -> Vec<BackendMessage> {
        vec![
            cols(&["recptr", "tli"]),
            row(&[Some("0/2000028"), Some("1")]),
            BackendMessage::CommandComplete("SELECT".into()),
            cols(&["spcoid", "spclocation", "size"]),
            row(&[None, None, None]),
            BackendMessage::CommandComplete("SELECT".into()),
        ]
    }

    fn trailer() -> Vec<BackendMessage> {
        vec![
            cols(&["recptr", "tli"]),
            row(&[Some("0/2000100"), Some("1")]),
            BackendMessage::CommandComplete("SELECT".into()),
            BackendMessage::ReadyForQuery(b'I'),
        ]
    }

    fn copy_out() -> BackendMessage {
        BackendMessage::CopyOutResponse(CopyFormat { overall: 0, columns: vec![] })
    }

    fn data(b: &[u8]) -> BackendMessage {
        BackendMessage::CopyData(Bytes::copy_from_slice(b))
    }

    fn run(version: u32, msgs: Vec<BackendMessage>) -> Result<Vec<BackupEvent>, Error> {
        let mut s = BaseBackupStream::new(version);
        let mut ev = Vec::new();
        for m in msgs {
            s.on_message(m)?;
            while let Some(e) = s.next_event() {
                ev.push(e);
            }
        }
        assert!(s.is_done());
        Ok(ev)
    }

    #[test]
    fn new_protocol() {
        let mut msgs = header();
        msgs.extend([
            copy_out(),
            data(b"nbase.tar\0\0"),
            data(b"dTAR1"),
            data(b"dTAR2"),
            data(b"p\0\0\0\0\0\0\0\x0a"),
            data(b"m"),
            data(b"d{json}"),
            BackendMessage::CopyDone,
        ]);
        msgs.extend(trailer());
        let ev = run(150_000, msgs).unwrap();
        assert!(matches!(&ev[0], BackupEvent::Started { start, tablespaces }
            if start.lsn == pgfmt::Lsn(0x200_0028) && tablespaces.len() == 1));
        assert_eq!(ev[1], BackupEvent::ArchiveStart { name: "base.tar".into(), location: None });
        assert_eq!(ev[2], BackupEvent::ArchiveData(Bytes::from_static(b"TAR1")));
        assert_eq!(ev[4], BackupEvent::Progress(10));
        assert_eq!(ev[5], BackupEvent::ManifestStart);
        assert_eq!(ev[6], BackupEvent::ManifestData(Bytes::from_static(b"{json}")));
        assert!(matches!(ev[7], BackupEvent::Finished(e) if e.lsn == pgfmt::Lsn(0x200_0100)));
    }

    #[test]
    fn legacy_protocol() {
        let mut msgs = header();
        msgs.extend([
            copy_out(),
            data(b"TAR"),
            BackendMessage::CopyDone,
            copy_out(),
            data(b"{json}"),
            BackendMessage::CopyDone,
        ]);
        msgs.extend(trailer());
        let ev = run(140_000, msgs).unwrap();
        assert_eq!(ev[1], BackupEvent::ArchiveStart { name: "base.tar".into(), location: None });
        assert_eq!(ev[2], BackupEvent::ArchiveData(Bytes::from_static(b"TAR")));
        assert_eq!(ev[3], BackupEvent::ManifestStart);
        assert_eq!(ev[4], BackupEvent::ManifestData(Bytes::from_static(b"{json}")));
    }

    #[test]
    fn rejects_garbage() {
        let mut s = BaseBackupStream::new(150_000);
        assert!(s.on_message(copy_out()).is_err());
        let mut s = BaseBackupStream::new(150_000);
        for m in header() {
            s.on_message(m).unwrap();
        }
        s.on_message(copy_out()).unwrap();
        assert!(s.on_message(data(b"")).is_err());
        assert!(s.on_message(data(b"z")).is_err());
        assert!(s.on_message(data(b"p\0")).is_err());
        assert!(s.on_message(data(b"nname-without-nul")).is_err());
    }
}
