//! Where a database's schema stands against the migrations a binary carries: what is still
//! to apply, and what the binary cannot vouch for (migrations it does not know, or knows with
//! different contents, or that failed half-way).
//!
//! Invariants:
//! - The comparison is pure: backends read what their database has applied and hand it here,
//!   so every backend judges a schema by the same rules.
//! - A schema is safe to serve only when it is exactly the binary's (`is_current`), and safe to
//!   migrate only when nothing but pending migrations stands between them (`is_migratable`):
//!   a newer or diverged database is never written to by an older or different binary.

use std::fmt;

/// One migration, as a binary carries it or a database recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub description: String,
    /// A hash of the migration's text, as the migration tool recorded it.
    pub checksum: Vec<u8>,
}

/// A migration a database has recorded as applied (or as started and failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub checksum: Vec<u8>,
    /// False when the migration started and did not finish.
    pub success: bool,
}

/// How a database's schema compares with a binary's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaCheck {
    /// Carried by the binary, not applied yet, in version order.
    pub pending: Vec<Migration>,
    /// Applied, but unknown to the binary: a newer release migrated this database.
    pub unknown: Vec<i64>,
    /// Applied with other contents than the binary's migration of the same version.
    pub changed: Vec<i64>,
    /// Recorded as started but not finished.
    pub failed: Vec<i64>,
}

impl SchemaCheck {
    /// Compares what a binary carries (`known`) with what a database applied (`applied`).
    pub fn compare(known: &[Migration], applied: &[AppliedMigration]) -> SchemaCheck {
        let mut check = SchemaCheck::default();
        for migration in known {
            match applied.iter().find(|a| a.version == migration.version) {
                None => check.pending.push(migration.clone()),
                Some(applied) if !applied.success => check.failed.push(applied.version),
                Some(applied) if applied.checksum != migration.checksum => {
                    check.changed.push(applied.version);
                }
                Some(_) => {}
            }
        }
        for applied in applied {
            if !known.iter().any(|m| m.version == applied.version) {
                if applied.success {
                    check.unknown.push(applied.version);
                } else {
                    check.failed.push(applied.version);
                }
            }
        }
        check.pending.sort_by_key(|m| m.version);
        check.unknown.sort_unstable();
        check.changed.sort_unstable();
        check.failed.sort_unstable();
        check
    }

    /// The schema is exactly the binary's: safe to serve.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.is_migratable()
    }

    /// Only pending migrations stand between the schema and the binary's.
    pub fn is_migratable(&self) -> bool {
        self.unknown.is_empty() && self.changed.is_empty() && self.failed.is_empty()
    }
}

/// What a run of migrations did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationRun {
    /// These migrations were applied, in this order; empty when the schema was current.
    Applied(Vec<Migration>),
    /// Nothing was applied: the schema is newer than the binary or diverged from it.
    Refused(SchemaCheck),
}

/// Version numbers as the migration files name them: `0003`.
fn versions(versions: impl IntoIterator<Item = i64>) -> String {
    versions
        .into_iter()
        .map(|version| format!("{version:04}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04} {}", self.version, self.description)
    }
}

impl fmt::Display for SchemaCheck {
    /// What is wrong with the schema, in one sentence per finding; "current" when nothing is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut findings = Vec::new();
        if !self.pending.is_empty() {
            let pending: Vec<String> = self.pending.iter().map(ToString::to_string).collect();
            findings.push(format!(
                "migrations not applied yet: {}",
                pending.join(", ")
            ));
        }
        if !self.unknown.is_empty() {
            findings.push(format!(
                "migrations applied by a newer release, unknown to this one: {}",
                versions(self.unknown.iter().copied())
            ));
        }
        if !self.changed.is_empty() {
            findings.push(format!(
                "migrations applied with other contents than this release's: {}",
                versions(self.changed.iter().copied())
            ));
        }
        if !self.failed.is_empty() {
            findings.push(format!(
                "migrations that started and did not finish: {}",
                versions(self.failed.iter().copied())
            ));
        }
        if findings.is_empty() {
            f.write_str("current")
        } else {
            f.write_str(&findings.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(version: i64, checksum: u8) -> Migration {
        Migration {
            version,
            description: format!("step {version}"),
            checksum: vec![checksum],
        }
    }

    fn applied(version: i64, checksum: u8, success: bool) -> AppliedMigration {
        AppliedMigration {
            version,
            checksum: vec![checksum],
            success,
        }
    }

    /// Compares and describes the result as `<current|migratable|refused>: <Display>`.
    fn check(known: &[Migration], applied: &[AppliedMigration], expected: &str) {
        let check = SchemaCheck::compare(known, applied);
        let verdict = if check.is_current() {
            "current"
        } else if check.is_migratable() {
            "migratable"
        } else {
            "refused"
        };
        assert_eq!(format!("{verdict}: {check}"), expected);
    }

    #[test]
    fn judges_a_schema_against_the_binary() {
        let binary = [known(1, 0xa), known(2, 0xb), known(3, 0xc)];
        check(
            &binary,
            &[],
            "migratable: migrations not applied yet: 0001 step 1, 0002 step 2, 0003 step 3",
        );
        check(
            &binary,
            &[applied(1, 0xa, true), applied(2, 0xb, true)],
            "migratable: migrations not applied yet: 0003 step 3",
        );
        check(
            &binary,
            &[
                applied(1, 0xa, true),
                applied(2, 0xb, true),
                applied(3, 0xc, true),
            ],
            "current: current",
        );
        check(
            &binary[..2],
            &[
                applied(1, 0xa, true),
                applied(2, 0xb, true),
                applied(3, 0xc, true),
            ],
            "refused: migrations applied by a newer release, unknown to this one: 0003",
        );
        check(
            &binary,
            &[applied(1, 0xa, true), applied(2, 0xff, true)],
            "refused: migrations not applied yet: 0003 step 3; \
             migrations applied with other contents than this release's: 0002",
        );
        check(
            &binary,
            &[applied(1, 0xa, true), applied(2, 0xb, false)],
            "refused: migrations not applied yet: 0003 step 3; \
             migrations that started and did not finish: 0002",
        );
        check(
            &binary[..1],
            &[applied(1, 0xa, true), applied(7, 0xd, false)],
            "refused: migrations that started and did not finish: 0007",
        );
    }
}
