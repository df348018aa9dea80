//! The results store: every run and run-set sondectl makes, kept whole in one SQLite file
//! (compiled in) beside the facts that list and match them.
//!
//! Schema versions follow `PRAGMA user_version`; a store written by an older sondectl is
//! brought up to date when opened, each step in its own transaction (a newer store is
//! refused rather than guessed at).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, params};

use super::document::{Document, Facts, Shape};
use crate::error::{Context as _, Result, refuse};

/// The schema this sondectl writes.
pub const SCHEMA_VERSION: u32 = 2;

/// How long a writer waits for another sondectl's transaction (runs record as they end, and
/// several can end at once).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One step of the schema, from the version before it.
struct Migration {
    /// The version it brings the store to.
    to: u32,
    sql: &'static str,
    /// Rewrites rows the step added columns for, from their documents.
    backfill: Option<fn(&rusqlite::Transaction<'_>) -> Result<()>>,
}

const MIGRATIONS: &[Migration] = &[
    // 1: the documents, and what `results list` showed.
    Migration {
        to: 1,
        sql: "CREATE TABLE results (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                shape TEXT NOT NULL,
                recorded_at_unix_ms INTEGER NOT NULL,
                started_at_unix_ms INTEGER NOT NULL,
                scenario TEXT,
                origin TEXT NOT NULL,
                kinds TEXT NOT NULL,
                nodes TEXT NOT NULL,
                sonde_version TEXT NOT NULL,
                spec_hash TEXT NOT NULL,
                complete INTEGER NOT NULL,
                document TEXT NOT NULL
              );",
        backfill: None,
    },
    // 2: what makes results comparable (zones, kernels, placements, paths, sizes, MTUs), how
    // many measurements each holds, and an index for `scenario:NAME@last-N`.
    Migration {
        to: 2,
        sql: "ALTER TABLE results ADD COLUMN zones TEXT NOT NULL DEFAULT '[]';
              ALTER TABLE results ADD COLUMN mtus TEXT NOT NULL DEFAULT '[]';
              ALTER TABLE results ADD COLUMN kernels TEXT NOT NULL DEFAULT '[]';
              ALTER TABLE results ADD COLUMN placements TEXT NOT NULL DEFAULT '[]';
              ALTER TABLE results ADD COLUMN paths TEXT NOT NULL DEFAULT '[]';
              ALTER TABLE results ADD COLUMN sizes TEXT NOT NULL DEFAULT '[]';
              ALTER TABLE results ADD COLUMN measurements INTEGER NOT NULL DEFAULT 0;
              CREATE INDEX results_by_scenario ON results (scenario, started_at_unix_ms);",
        backfill: Some(backfill_comparables),
    },
];

/// A stored result, as `results list` shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its ID in the store.
    pub id: i64,
    /// A run or a run-set.
    pub shape: Shape,
    /// When it was stored, ms since the epoch.
    pub recorded_at_unix_ms: u64,
    /// What the store keeps beside the document.
    pub facts: Facts,
}

/// Which results to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Run-sets of this scenario only.
    pub scenario: Option<String>,
    /// Started at or after, ms since the epoch.
    pub since_unix_ms: Option<u64>,
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    connection: Connection,
    path: PathBuf,
}

impl Store {
    /// Where the store lives unless `--store` says otherwise: `$XDG_DATA_HOME/sonde/results.db`
    /// (`~/.local/share/sonde/results.db` without it).
    pub fn default_path() -> Option<PathBuf> {
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share"))
            })?;
        Some(data.join("sonde").join("results.db"))
    }

    /// Opens (or creates) the store at `path`, bringing its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let connection = Connection::open(path)
            .with_context(|| format!("opening the results store {}", path.display()))?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .context("setting the store's busy timeout")?;
        // Readers never wait for a writer, and a run's record is one small append.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .context("setting the store's journal mode")?;
        let mut store = Self {
            connection,
            path: path.to_owned(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The file it lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the file as it is now.
    pub fn version(&self) -> Result<u32> {
        version(&self.connection)
    }

    fn migrate(&mut self) -> Result<()> {
        let found = self.version()?;
        if found > SCHEMA_VERSION {
            refuse!(
                "the results store {} has schema version {found}, written by a newer sondectl \
                 (this one knows up to {SCHEMA_VERSION}): use that sondectl, or --store another file",
                self.path.display()
            );
        }
        for migration in MIGRATIONS.iter().filter(|m| m.to > found) {
            let tx = self
                .connection
                .transaction()
                .context("starting a schema migration")?;
            tx.execute_batch(migration.sql)
                .with_context(|| format!("migrating the store to version {}", migration.to))?;
            if let Some(backfill) = migration.backfill {
                backfill(&tx)?;
            }
            tx.pragma_update(None, "user_version", migration.to)
                .context("recording the schema version")?;
            tx.commit()
                .with_context(|| format!("committing schema version {}", migration.to))?;
        }
        Ok(())
    }

    /// Stores `document`; returns its ID.
    pub fn record(&mut self, document: &Document) -> Result<i64> {
        let facts = document.facts();
        let what = || format!("storing a result in {}", self.path.display());
        let tx = self.connection.transaction().with_context(what)?;
        tx.execute(
            "INSERT INTO results (shape, recorded_at_unix_ms, started_at_unix_ms, scenario,
                origin, kinds, nodes, sonde_version, spec_hash, complete, document)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                document.shape().name(),
                now_ms() as i64,
                facts.started_at_unix_ms as i64,
                facts.scenario,
                facts.origin,
                json_list(&facts.kinds),
                json_list(&facts.nodes),
                facts.sonde_version,
                facts.spec_hash,
                facts.complete,
                document.json().to_string(),
            ],
        )
        .with_context(what)?;
        let id = tx.last_insert_rowid();
        write_comparables(&tx, id, &facts)?;
        tx.commit().with_context(what)?;
        Ok(id)
    }

    /// The stored results `filter` selects, oldest first.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Entry>> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, shape, recorded_at_unix_ms, started_at_unix_ms, scenario, origin,
                    kinds, nodes, sonde_version, spec_hash, complete, kernels, placements, paths,
                    sizes, measurements, zones, mtus
                 FROM results
                 WHERE (?1 IS NULL OR scenario = ?1) AND (?2 IS NULL OR started_at_unix_ms >= ?2)
                 ORDER BY started_at_unix_ms, id",
            )
            .context("listing the store")?;
        let rows = statement
            .query_map(
                params![filter.scenario, filter.since_unix_ms.map(|ms| ms as i64)],
                entry_of_row,
            )
            .context("listing the store")?;
        rows.map(|row| row.context("reading a stored result"))
            .collect()
    }

    /// The stored document `id`.
    pub fn get(&self, id: i64) -> Result<Document> {
        let text: Option<String> = self
            .connection
            .query_row("SELECT document FROM results WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
            .with_context(|| format!("reading result {id}"))?;
        let Some(text) = text else {
            refuse!(
                "no result {id} in {} (`sondectl results list` shows what is there)",
                self.path.display()
            );
        };
        Document::parse(&text)
    }

    /// The IDs of the `count` most recent run-sets of `scenario`, oldest first.
    pub fn last_of_scenario(&self, scenario: &str, count: usize) -> Result<Vec<i64>> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT id FROM results WHERE scenario = ?1
                 ORDER BY started_at_unix_ms DESC, id DESC LIMIT ?2",
            )
            .context("finding a scenario's run-sets")?;
        let mut ids = statement
            .query_map(params![scenario, count as i64], |row| row.get(0))
            .context("finding a scenario's run-sets")?
            .collect::<rusqlite::Result<Vec<i64>>>()
            .context("finding a scenario's run-sets")?;
        if ids.is_empty() {
            refuse!(
                "no run-set of scenario {scenario:?} in {}",
                self.path.display()
            );
        }
        ids.reverse();
        Ok(ids)
    }

    /// Keeps the `keep` most recent results of each scenario (and of plain runs, taken
    /// together); returns how many went.
    pub fn gc(&mut self, keep: usize) -> Result<usize> {
        let removed = self
            .connection
            .execute(
                "DELETE FROM results WHERE id IN (
                   SELECT id FROM (
                     SELECT id, ROW_NUMBER() OVER (
                       PARTITION BY COALESCE(scenario, '') ORDER BY started_at_unix_ms DESC, id DESC
                     ) AS newest FROM results
                   ) WHERE newest > ?1
                 )",
                [keep as i64],
            )
            .context("removing old results")?;
        if removed > 0 {
            // Give the space back: a store pruned in CI should shrink.
            self.connection
                .execute_batch("VACUUM")
                .context("compacting the store")?;
        }
        Ok(removed)
    }
}

fn version(connection: &Connection) -> Result<u32> {
    connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .context("reading the store's schema version")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or_default()
}

fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

fn list_of<T: serde::de::DeserializeOwned>(text: &str) -> Vec<T> {
    serde_json::from_str(text).unwrap_or_default()
}

fn entry_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let shape: String = row.get(1)?;
    let text = |i: usize| -> rusqlite::Result<String> { row.get(i) };
    Ok(Entry {
        id: row.get(0)?,
        shape: if shape == Shape::RunSet.name() {
            Shape::RunSet
        } else {
            Shape::Run
        },
        recorded_at_unix_ms: row.get::<_, i64>(2)? as u64,
        facts: Facts {
            started_at_unix_ms: row.get::<_, i64>(3)? as u64,
            scenario: row.get(4)?,
            origin: text(5)?,
            kinds: list_of(&text(6)?),
            nodes: list_of(&text(7)?),
            sonde_version: text(8)?,
            spec_hash: text(9)?,
            complete: row.get(10)?,
            kernels: list_of(&text(11)?),
            placements: list_of(&text(12)?),
            paths: list_of(&text(13)?),
            sizes: list_of(&text(14)?),
            measurements: row.get::<_, i64>(15)? as u64,
            zones: list_of(&text(16)?),
            mtus: list_of(&text(17)?),
        },
    })
}

/// Version 2's columns of result `id`: what makes it comparable.
fn write_comparables(tx: &rusqlite::Transaction<'_>, id: i64, facts: &Facts) -> Result<()> {
    tx.prepare_cached(
        "UPDATE results SET kernels = ?2, placements = ?3, paths = ?4, sizes = ?5,
            measurements = ?6, zones = ?7, mtus = ?8 WHERE id = ?1",
    )
    .and_then(|mut update| {
        update.execute(params![
            id,
            json_list(&facts.kernels),
            json_list(&facts.placements),
            json_list(&facts.paths),
            json_list(&facts.sizes),
            facts.measurements as i64,
            json_list(&facts.zones),
            json_list(&facts.mtus),
        ])
    })
    .with_context(|| format!("writing what makes result {id} comparable"))?;
    Ok(())
}

/// Version 2's columns, read from each stored document.
fn backfill_comparables(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let rows: Vec<(i64, String)> = {
        let mut statement = tx
            .prepare("SELECT id, document FROM results")
            .context("reading stored documents")?;
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .context("reading stored documents")?
            .collect::<rusqlite::Result<_>>()
            .context("reading stored documents")?
    };
    for (id, text) in rows {
        // A document this sondectl cannot read keeps the defaults: listed, never lost.
        if let Ok(document) = Document::parse(&text) {
            write_comparables(tx, id, &document.facts())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_from_a_newer_sondectl_is_refused() {
        let dir = std::env::temp_dir().join(format!("sonde-store-newer-{}", std::process::id()));
        let path = dir.join("results.db");
        {
            std::fs::create_dir_all(&dir).expect("dir");
            let connection = Connection::open(&path).expect("open");
            connection
                .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .expect("version");
        }
        let err = Store::open(&path).expect_err("refused");
        assert!(err.to_string().contains("newer sondectl"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
